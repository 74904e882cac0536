"""A model's weights, shape and tokenizer, read from a run, one of its checkpoints or an export.

`load_source` is what `sample`, `eval` and `export` start from: it picks the checkpoint
(best unless told otherwise, the latest for a run without best/), verifies it and the
run's tokenizer, or checks an export's files against the sha256s its marker records.
The safetensors reader and writer here handle bfloat16, which numpy lacks.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from localtrain import checkpoint, config as cfg, ownership
from localtrain.config import ModelConfig
from localtrain.errors import CheckpointError, LocaltrainError
from localtrain.files import file_digest, write_synced
from localtrain.runfiles import CONFIG_FILE, no_such_run

DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}
"""The dtypes weights are stored in: safetensors code and bytes per value."""


@dataclass
class Source:
    """A model ready to run: its shape, its weights under the shared names and its tokenizer."""

    model: ModelConfig
    vocab_size: int
    weights: dict[str, np.ndarray]
    tokenizer_path: Path
    tokenizer_type: str
    """bpe, unigram or char."""
    origin: Path
    """The checkpoint or export directory the weights came from."""
    run_config: cfg.Config | None = None
    dtype: str = "float32"
    """The dtype the weights were trained in (a checkpoint's) or stored in (an export's)."""


def checkpoint_dir(run_dir: Path, which: str) -> list[Path]:
    """The checkpoint directories `which` names (best, latest or step-N), newest first."""
    if which == "best":
        return [run_dir / "best"]
    found = checkpoint.complete_checkpoints(run_dir)
    if which == "latest":
        return list(reversed(found))
    step = which.removeprefix(checkpoint.PREFIX)
    if not step.isdigit():
        raise LocaltrainError(
            f"--checkpoint {which}: name a checkpoint as best, latest or step-N (N a step number, e.g. step-500)."
        )
    wanted = run_dir / "checkpoints" / checkpoint.step_dir_name(int(step))
    if wanted not in found:
        have = ", ".join(p.name for p in found) or "none"
        raise CheckpointError(
            f"--checkpoint {which}: {run_dir} has no complete checkpoint at step {int(step)} (it has: {have})."
            " Pick one of those, or best or latest."
        )
    return [wanted]


def warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def note_stderr(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


CHECKPOINT_HELP = ("which of the run's weights: best (the default: the best validation figure so far; the latest"
                   " checkpoint when the run has no best/ yet), latest, or step-N")


def default_checkpoint(run_dir: Path, use: str = "used", note: Callable[[str], None] = note_stderr) -> str:
    """The checkpoint `sample`, `export` and `eval` take when none is named (or best is): best,
    or latest (with a note saying so, `use` saying what is done with it) for a run that has
    not written best/. A best/ whose write did not finish is refused, not passed over."""
    best = run_dir / checkpoint.BEST
    if (best / checkpoint.MARKER).is_file():
        return "best"
    if best.exists():
        raise CheckpointError(
            f"{best} is incomplete: it has no {checkpoint.MARKER} marker (its write was interrupted, or it was "
            f"changed by hand), so it is not {use}. Pass --checkpoint latest (or step-N) to take another "
            f"checkpoint; training on with --resume writes a new best/ at its next better evaluation."
        )
    note(f"{run_dir} has no best/ checkpoint yet (it has not evaluated: train.eval_every was 0, or it stopped "
         f"before the first evaluation), so the latest checkpoint is {use}. Pass --checkpoint to choose another.")
    return "latest"


def load_source(path: Path | str, which: str | None = None, warn: Callable[[str], None] = warn_stderr,
                note: Callable[[str], None] = note_stderr, use: str = "used") -> Source:
    """Weights, shape and tokenizer from a run directory, one of its checkpoints, or an export.

    `which` names a run's checkpoint (best, latest, step-N); None (or best) takes `default_checkpoint`,
    whose note says the latest checkpoint is `use`d.
    A damaged checkpoint is skipped with a warning when `which` is latest.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise LocaltrainError(no_such_run(path))
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return _load_export(path)
    if (path / checkpoint.STATE_FILE).is_file() and not (path / CONFIG_FILE).is_file():
        run_dir = path.parent if path.name == "best" else path.parent.parent
        candidates = [path]
    elif (path / CONFIG_FILE).is_file():
        if which in (None, "best"):
            which = default_checkpoint(path, use, note)
        run_dir, candidates = path, checkpoint_dir(path, which)
    else:
        raise LocaltrainError(
            f"{path} is neither a run directory (with {CONFIG_FILE}), a checkpoint directory (with"
            f" {checkpoint.STATE_FILE}) nor an export (with config.json and model.safetensors). Give one of those,"
            " e.g. runs/python-stdlib-20260101-120000."
        )
    config = cfg.resolve(base=cfg.read_toml(run_dir / CONFIG_FILE))
    skipped = []
    for ckpt in candidates:
        try:
            loaded = checkpoint.load(ckpt, with_optimizer=False)
            break
        except CheckpointError as exc:
            skipped.append(str(exc))
            warn(f"skipping {ckpt.name}: {exc}")
    else:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise CheckpointError(
            f"{run_dir} has no usable {which} checkpoint{why}. Train it first with `localtrain run`, or pick another"
            " with --checkpoint best|latest|step-N."
        )
    tokenizer = run_dir / "tokenizer.model"
    if not tokenizer.is_file() or file_digest(tokenizer) != loaded.state.get("tokenizer_sha256"):
        raise CheckpointError(
            f"{tokenizer} is missing or is not the tokenizer {loaded.path} was trained with, so its token ids"
            " would mean other text. Restore the run's tokenizer.model."
        )
    return Source(config.model, int(loaded.state["vocab_size"]), loaded.weights, tokenizer,
                  config.data.tokenizer, loaded.path, config, trained_dtype(loaded.state))


def _verify_export(path: Path) -> None:
    """Check the files of an export against the sha256s its marker records (an export without one is read as is)."""
    recorded = (ownership.read_marker(path) or {}).get("files")
    if not isinstance(recorded, dict):
        return
    for name, digest in recorded.items():
        file = path / str(name)
        if "/" in str(name) or not file.is_file():
            raise CheckpointError(f"{file}, part of the export in {path}, is missing. Export the run again.")
        if file_digest(file) != digest:
            raise CheckpointError(f"{file} does not match the sha256 recorded when it was exported: it was edited "
                                  f"or is damaged. Export the run again.")


def _load_export(path: Path) -> Source:
    _verify_export(path)
    c = json.loads((path / "config.json").read_text())
    heads = int(c["num_attention_heads"])
    model = ModelConfig(
        n_layer=int(c["num_hidden_layers"]), n_head=heads, n_embd=int(c["hidden_size"]),
        n_kv_head=0 if int(c.get("num_key_value_heads", heads)) == heads else int(c["num_key_value_heads"]),
        intermediate_size=int(c["intermediate_size"]), seq_len=int(c["max_position_embeddings"]),
        rope_theta=float(c.get("rope_theta", 10000.0)), norm_eps=float(c["rms_norm_eps"]), pad_vocab_multiple=1,
    )
    kind = c.get("localtrain", {}).get("tokenizer", "bpe")
    dtype = c.get("torch_dtype") if c.get("torch_dtype") in DTYPES else "float32"
    return Source(model, int(c["vocab_size"]), read_safetensors(path / "model.safetensors"),
                  path / "tokenizer.model", kind, path, dtype=dtype)


def trained_dtype(state: dict) -> str:
    """The dtype a checkpoint's run trained in, from its state.json (float32 for a record without one)."""
    dtype = state.get("plan", {}).get("dtype") or state.get("backend", {}).get("dtype")
    return dtype if dtype in DTYPES else "float32"


# -- safetensors, with bfloat16 (which numpy lacks) -----------------------------------------


def write_safetensors(path: Path, arrays: dict[str, np.ndarray], dtype: str, metadata: dict[str, str]) -> None:
    code, _ = DTYPES[dtype]
    header: dict[str, object] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name], dtype=np.float32)
        if dtype == "bfloat16":
            bits = a.view(np.uint32)
            # Round to nearest even on the 16 bits dropped.
            blob = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
        else:
            blob = a.astype("<f4" if dtype == "float32" else "<f2").tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    write_synced(path, len(head).to_bytes(8, "little") + head + b"".join(blobs))


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float32."""
    data = path.read_bytes()
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        body = memoryview(data)[8 + size :]
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            raw = np.frombuffer(body[begin:end], dtype={"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[info["dtype"]])
            if info["dtype"] == "BF16":
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            out[name] = raw.astype(np.float32).reshape(info["shape"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path} is not a float safetensors file this localtrain reads ({exc!r}). Export it again."
        ) from exc
    return out
