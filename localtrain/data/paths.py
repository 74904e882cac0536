"""The layout of localtrain's cache, in one place.

    <cache>/                 data.cache_dir, else $LOCALTRAIN_CACHE, else ~/.cache/localtrain
      data/<key>/            one prepared corpus: manifest, tokenizer, token shards
      downloads/<url-key>/   one downloaded file, resumable
      tuning.json            the tuner's measurements, per machine and shape
      peak_flops.json        the measured peak FLOP/s of each device

Everything that reads or writes the cache asks here where.
"""

from __future__ import annotations

import os
from pathlib import Path

from localtrain.schema import DataConfig


def cache_root(data: DataConfig | None = None) -> Path:
    """Where the cache lives: data.cache_dir, else $LOCALTRAIN_CACHE, else ~/.cache/localtrain."""
    root = (data.cache_dir if data else "") or os.environ.get("LOCALTRAIN_CACHE") or "~/.cache/localtrain"
    return Path(root).expanduser()


def prepared_root(data: DataConfig | None = None) -> Path:
    """The folder holding one subfolder per prepared corpus."""
    return cache_root(data) / "data"


def downloads_dir(data: DataConfig | None = None) -> Path:
    """The folder holding one subfolder per downloaded URL."""
    return cache_root(data) / "downloads"
