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
import json
import os
import re
from pathlib import Path

from localtrain import ownership
from localtrain.errors import LocaltrainError
from localtrain.files import file_digest, fsync_dir, make_dir, remove_tree, replace, replace_dir, write_synced
from localtrain.weights import CHECKPOINT_HELP, DTYPES, Source, load_source, write_safetensors

EMBED = "model.embed_tokens.weight"
SPACE = "\u2581"
NEWLINE = "\n"
EXPORT_FILES = ("config.json", "model.safetensors", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "generation_config.json")


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
    """The temporary and replaced directories of earlier exports to `out` that did not finish: named for
    `out`, left by this process or one that is gone, and marked as exports — or killed before their
    marker was complete, holding nothing but that process's unfinished marker."""
    pattern = re.compile(rf"\.(tmp|old)-{re.escape(out.name)}-(\d+)")
    for p in out.parent.iterdir():
        match = pattern.fullmatch(p.name)
        if not (match and p.is_dir() and not p.is_symlink()):
            continue
        pid = int(match.group(2))
        if pid != os.getpid() and ownership.pid_alive(pid):
            continue
        unfinished = f".{ownership.MARKER}.tmp{pid}"  # write_atomic's temporary name for the marker
        if ownership.kind_of(p) == "export" or ownership.entries_are(p, lambda name: name == unfinished):
            remove_tree(p)


def export(source: Source, out: Path, fmt: str = "hf", dtype: str = "float32", force: bool = False) -> Path:
    """Write `source` as a Hugging Face Llama directory at `out` (atomically)."""
    out = Path(out).expanduser()
    occupied = check_out(source, out, force)
    weights = {**source.weights, EMBED: source.weights[EMBED][: source.vocab_size]}  # drop the padded rows
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
        ownership.write_marker(tmp, "export", files={n: file_digest(tmp / n) for n in EXPORT_FILES},
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
