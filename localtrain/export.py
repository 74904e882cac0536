"""`localtrain export RUN --format hf|mlx --out DIR`: a run as a Hugging Face Llama directory.

    DIR/config.json              LlamaForCausalLM's configuration (tied embeddings)
    DIR/model.safetensors        the weights under their Hugging Face names
    DIR/tokenizer.model          the run's sentencepiece model, as trained
    DIR/tokenizer.json           the same tokenizer for the `tokenizers` library
    DIR/tokenizer_config.json    no BOS/EOS added, no prefix space: the ids the run trained on
    DIR/special_tokens_map.json
    DIR/generation_config.json   BOS/EOS ids and the run's sampling settings

localtrain's weights already carry the Hugging Face names and the rotate-half q/k
layout, so the export copies them; the embedding keeps only the tokenizer's rows (the
rows padded for speed are never a token). mlx-lm reads the same layout: `--format mlx`
writes the same files, marked as MLX weights. The directory is written beside DIR and
renamed into place, so a failed export leaves nothing half-written.

DIR also gets a `.localtrain` marker holding the sha256 of every file, checked when
localtrain reads the export back (`sample`, `eval`). An existing DIR is replaced only
when it is an export localtrain wrote, only with --force, and then only the export's
own files: anything else in it stays. DIR may never be the run exported, nor hold it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from localtrain import checkpoint, config as cfg, ownership
from localtrain.config import ModelConfig
from localtrain.errors import CheckpointError, LocaltrainError
from localtrain.files import fsync_dir, make_dir, remove_tree, replace, replace_dir, write_synced
from localtrain.rundir import no_such_run
from localtrain.runfiles import CONFIG_FILE

EMBED = "model.embed_tokens.weight"
SPACE = "\u2581"
NEWLINE = "\n"
DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}
EXPORT_FILES = ("config.json", "model.safetensors", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "generation_config.json")


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
    if not tokenizer.is_file() or hashlib.sha256(tokenizer.read_bytes()).hexdigest() != loaded.state.get(
        "tokenizer_sha256"
    ):
        raise CheckpointError(
            f"{tokenizer} is missing or is not the tokenizer {loaded.path} was trained with, so its token ids"
            " would mean other text. Restore the run's tokenizer.model."
        )
    return Source(config.model, int(loaded.state["vocab_size"]), loaded.weights, tokenizer,
                  config.data.tokenizer, loaded.path, config, trained_dtype(loaded.state))


def _verify_export(path: Path) -> None:
    """Check the files of an export against the sha256s its marker records (an export without one is read as is)."""
    marker = ownership.read_marker(path)
    recorded = (marker or {}).get("files")
    if not isinstance(recorded, dict):
        return
    for name, digest in recorded.items():
        file = path / str(name)
        if "/" in str(name) or not file.is_file():
            raise CheckpointError(f"{file}, part of the export in {path}, is missing. Export the run again.")
        if _file_sha256(file) != digest:
            raise CheckpointError(f"{file} does not match the sha256 recorded when it was exported: it was edited "
                                  f"or is damaged. Export the run again.")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


# -- safetensors, with bfloat16 (which numpy lacks) ---------------------------------------


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


# -- tokenizer files ------------------------------------------------------------------------


def tokenizer_json(model_bytes: bytes, kind: str) -> dict:
    """The sentencepiece model as a `tokenizers` pipeline that encodes to the same ids.

    Spaces become "▁" and nothing else is normalised or prepended; the text is one
    piece sequence (sentencepiece does not split it at spaces when encoding); "\\n" and
    the control pieces are added tokens, matched before the model. bpe merges are ranked
    by the id of the piece they make, as sentencepiece's scores rank them.
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    added = [
        {"id": i, "content": p, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": p != NEWLINE}
        for i, p in enumerate(pieces)
        if sp.is_control(i) or sp.is_unknown(i) or p == NEWLINE
    ]
    if kind == "unigram":
        model: dict = {"type": "Unigram", "unk_id": sp.unk_id(), "byte_fallback": True,
                       "vocab": [[p, float(sp.get_score(i))] for i, p in enumerate(pieces)]}
    else:
        vocab = {p: i for i, p in enumerate(pieces)}
        skip = {a["content"] for a in added}
        ranked = []
        for i, p in enumerate(pieces if kind == "bpe" else []):
            if p in skip or sp.is_byte(i):
                continue
            pairs = [(p[:k], p[k:]) for k in range(1, len(p))]
            pairs = [(a, b) for a, b in pairs if a in vocab and b in vocab and a not in skip and b not in skip]
            ranked += [(i, len(a), len(b), vocab[a], vocab[b], a, b) for a, b in pairs]
        model = {"type": "BPE", "dropout": None, "unk_token": sp.id_to_piece(sp.unk_id()),
                 "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                 "byte_fallback": kind == "bpe", "ignore_merges": False, "vocab": vocab,
                 "merges": [[r[5], r[6]] for r in sorted(ranked)]}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
        ]},
        "model": model,
    }


def tokenizer_config(added: list[dict], kind: str, seq_len: int) -> dict:
    # LlamaTokenizer rebuilds a bpe pipeline from tokenizer.json; for char and unigram
    # models the generic class keeps the file's pipeline as it is.
    return {
        "tokenizer_class": "LlamaTokenizer" if kind == "bpe" else "PreTrainedTokenizerFast",
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False, "legacy": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False,
        "model_max_length": seq_len,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }


def hf_config(source: Source, dtype: str) -> dict:
    m = source.model
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": m.n_embd, "intermediate_size": m.ffn_size, "num_hidden_layers": m.n_layer,
        "num_attention_heads": m.n_head, "num_key_value_heads": m.kv_heads, "head_dim": m.head_dim,
        "hidden_act": "silu", "max_position_embeddings": m.seq_len, "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rope_theta, "rope_scaling": None, "vocab_size": source.vocab_size,
        "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "initializer_range": m.init_std, "bos_token_id": 1, "eos_token_id": 2, "use_cache": True,
        "torch_dtype": dtype, "localtrain": {"tokenizer": source.tokenizer_type},
    }


def looks_like_export(directory: Path) -> bool:
    """An export written before markers existed: the export's files and nothing else, with its config.json."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and "localtrain" in config
            and ownership.entries_are(directory, lambda n: n in EXPORT_FILES))


def check_out(source: Source, out: Path, force: bool) -> bool:
    """Refuse an --out that is not localtrain's to replace; whether an export is there to replace."""
    advice = "Choose another --out (a new or empty directory)."
    if ownership.contains(out, source.origin) or ownership.contains(out, source.tokenizer_path):
        raise LocaltrainError(f"--out {out} is, or holds, the {source.origin} being exported: replacing it would "
                              f"delete what is exported. Nothing was written. {advice}")
    ownership.check(out, "export", looks_like_export, f"--out {out}", advice)
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and not force:
        raise LocaltrainError(
            f"--out {out} already exists and is not empty; nothing was written. Choose another --out, or pass"
            " --force to replace that export (only its own files: anything else in it stays)."
        )
    return occupied


def _remove_stale_temps(out: Path) -> None:
    """The temporary and replaced directories of earlier exports to `out` that did not finish: marked as
    exports, named for `out`, and left by this process or one that is gone."""
    pattern = re.compile(rf"\.(tmp|old)-{re.escape(out.name)}-(\d+)")
    if not out.parent.is_dir():
        return
    for p in out.parent.iterdir():
        match = pattern.fullmatch(p.name)
        if match and p.is_dir() and not p.is_symlink() and ownership.kind_of(p) == "export":
            pid = int(match.group(2))
            if pid == os.getpid() or not _pid_alive(pid):
                remove_tree(p)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def export(source: Source, out: Path, fmt: str = "hf", dtype: str = "float32", force: bool = False) -> Path:
    """Write `source` as a Hugging Face Llama directory at `out` (atomically)."""
    out = Path(out).expanduser()
    occupied = check_out(source, out, force)
    weights = dict(source.weights)
    weights[EMBED] = weights[EMBED][: source.vocab_size]  # drop the padded rows
    model_bytes = source.tokenizer_path.read_bytes()
    tok = tokenizer_json(model_bytes, source.tokenizer_type)
    t = source.run_config.train if source.run_config else None
    files = {
        "config.json": hf_config(source, dtype),
        "tokenizer.json": tok,
        "tokenizer_config.json": tokenizer_config(tok["added_tokens"], source.tokenizer_type, source.model.seq_len),
        "special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        "generation_config.json": {
            "bos_token_id": 1, "eos_token_id": 2, "do_sample": True,
            "temperature": t.temperature if t else 0.8, "top_k": t.top_k if t else 50,
        },
    }
    make_dir(out.parent)
    _remove_stale_temps(out)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    if tmp.exists():
        remove_tree(tmp)
    make_dir(tmp)
    ownership.write_marker(tmp, "export")  # (first: a kill leaves a temporary directory known to be ours)
    try:
        write_safetensors(tmp / "model.safetensors", weights, dtype, {"format": "mlx" if fmt == "mlx" else "pt"})
        write_synced(tmp / "tokenizer.model", model_bytes)
        for name, content in files.items():
            write_synced(tmp / name, (json.dumps(content, indent=1, ensure_ascii=False) + "\n").encode())
        ownership.write_marker(tmp, "export", files={n: _file_sha256(tmp / n) for n in EXPORT_FILES},
                               source=str(source.origin))
        fsync_dir(tmp)
        if occupied and not ownership.entries_are(out, lambda n: n in EXPORT_FILES or n == ownership.MARKER):
            # Things of the user's beside the export: replace the export's files one by one, keep the rest.
            for name in [*EXPORT_FILES, ownership.MARKER]:
                replace(tmp / name, out / name)
        elif out.is_dir() and not occupied:
            replace(tmp, out)  # over an empty directory
        else:
            replace_dir(tmp, out)
    finally:
        if tmp.exists():
            remove_tree(tmp)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run directory, or one of its checkpoint directories")
    p.add_argument("--out", required=True, metavar="DIR", help="the directory to write")
    p.add_argument("--format", choices=["hf", "mlx"], default="hf",
                   help="hf: Hugging Face Llama (transformers, mlx-lm); mlx: the same layout marked as MLX weights")
    p.add_argument("--checkpoint", default=None, metavar="best|latest|step-N", help=CHECKPOINT_HELP)
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="dtype of the exported weights (default: the dtype the run trained in)")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it is an export localtrain wrote (only its files; never anything else)")


def main(args: argparse.Namespace) -> int:
    source = load_source(Path(args.run), args.checkpoint, use="exported")
    dtype = args.dtype or source.dtype
    out = export(source, Path(args.out), args.format, dtype, args.force)
    params = sum(v.size for v in source.weights.values())
    print(f"Exported {source.origin} ({params:,} parameters, vocabulary {source.vocab_size}) to {out}"
          f" as {'Hugging Face' if args.format == 'hf' else 'MLX'} Llama weights in {dtype}.")
    return 0
