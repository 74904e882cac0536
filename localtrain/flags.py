"""The flags `run`, `prepare` and `config` share, and the config overrides they stand for.

Each flag is a shorthand for one config key (`--data` for data.source, `--max-steps` for
train.max_steps, ...); `overrides()` turns the values given into the `KEY=VALUE` strings
`config.resolve` applies, in the order the command line gives them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

FLAG_KEYS = (("max_steps", "train.max_steps"), ("max_time", "train.max_time"),
             ("device", "run.device"), ("backend", "run.backend"), ("seed", "train.seed"))


def add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="preset name (see `localtrain config --presets`) or a TOML file; default:"
                   " picked from --data (text for prose, python-stdlib for Python source), else python-stdlib")
    p.add_argument("--data", metavar="PATH", help="train on this file or directory (sets data.source)")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps to train (train.max_steps)")
    p.add_argument("--max-time", type=float, metavar="MIN", help="stop after this many minutes (train.max_time)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="where to train (run.device)")
    p.add_argument("--backend", choices=["torch", "mlx"], help="training framework (run.backend)")
    p.add_argument("--seed", type=int, help="seed for init, data order and samples (train.seed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=3e-4 (repeatable)")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Where the commands that run a trained model (sample, eval) run it."""
    p.add_argument("--backend", choices=["torch", "mlx"], default=None,
                   help="framework to run on (default: mlx on Apple silicon, else torch)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="where to run")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="compute dtype (default: the one the weights were trained in)")


def overrides(data: str | None = None, extra: list[str] | tuple[str, ...] = (), **flags: object) -> list[str]:
    """The overrides for the flags given (None: not given), then the `--set` ones in `extra`."""
    out = []
    if data is not None:
        path = Path(data).expanduser()
        # Paths are stored absolute so the run resumes from any working directory.
        out.append(f"data.source={path.resolve() if path.exists() else data}")
    return out + [f"{key}={flags[flag]}" for flag, key in FLAG_KEYS if flags.get(flag) is not None] + list(extra)


def overrides_from(args: argparse.Namespace) -> list[str]:
    """The overrides of parsed command-line flags."""
    return overrides(args.data, args.overrides, **{flag: getattr(args, flag) for flag, _ in FLAG_KEYS})
