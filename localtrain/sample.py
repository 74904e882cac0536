"""`localtrain sample RUN`: generate text from a run's checkpoint or from an export.

    localtrain sample runs/python-stdlib-20260101-120000 --prompt "def " --max-tokens 200
    localtrain sample runs/NAME --checkpoint best --prompt-file prompt.py --top-p 0.9 --seed 7
    localtrain sample exports/NAME --backend mlx --temperature 0      # greedy

Either backend runs any checkpoint: the weights are stored under the shared names.
The same seed, backend and weights give the same text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from localtrain import sampling
from localtrain.errors import LocaltrainError
from localtrain.flags import add_model_flags
from localtrain.weights import CHECKPOINT_HELP, Source, load_source


@dataclass(frozen=True)
class Settings:
    """How to sample: the same names as the train.* sampling keys."""

    max_tokens: int = 200
    temperature: float = 0.8
    """0 means greedy: always the most likely token."""
    top_k: int = 50
    top_p: float = 1.0
    seed: int = 0
    num_samples: int = 1

    def __post_init__(self) -> None:
        problems = [problem for wrong, problem in (
            (self.max_tokens < 1, f"--max-tokens {self.max_tokens}: generate at least 1 token"),
            (self.temperature < 0, f"--temperature {self.temperature}: use 0 (greedy) or a positive value such as 0.8"),
            (self.top_k < 0, f"--top-k {self.top_k}: use 0 (every token) or a positive count such as 50"),
            (not 0 < self.top_p <= 1, f"--top-p {self.top_p}: use a share of probability in (0, 1], e.g. 0.9"),
            (self.num_samples < 1, f"--num-samples {self.num_samples}: draw at least 1 sample per prompt"),
        ) if wrong]
        if problems:
            raise LocaltrainError("Cannot sample: " + "; ".join(problems) + ".")


def build_backend(source: Source, backend: str | None = None, device: str = "auto", dtype: str | None = None):
    """A backend holding `source`'s weights, ready to generate (no optimizer).

    The backend and device are those a run on this machine would get (the planner's rule);
    the dtype is the one the weights were trained in unless `dtype` says otherwise.
    """
    from localtrain import config as cfg, planner
    from localtrain.backends import backend_class
    from localtrain.hardware import probe

    config = source.run_config or cfg.Config(model=source.model)
    run = dataclasses.replace(config.run, backend=backend or "auto", device=device)
    name, where, _ = planner.choose_backend(dataclasses.replace(config, run=run), probe())
    chosen = dtype or source.dtype
    if name == "mlx" and chosen == "float16":
        chosen = "float32"  # MLX trains and runs in float32 or bfloat16
    b = backend_class(name)(where if name == "torch" else device, chosen, 0, False)
    b.build(source.model, source.vocab_size, 0)
    b.load_state_arrays(source.weights, None, 0)
    return b


def sample(source: Source, prompts: list[str], settings: Settings, backend: str | None = None,
           device: str = "auto", model=None, dtype: str | None = None) -> list[dict]:
    """One record per prompt and draw: prompt, text (the continuation), tokens, seed.

    `model`: a backend already holding `source`'s weights (else one is built).
    """
    from localtrain.data.tokenizer import Tokenizer

    tok = Tokenizer.load(source.tokenizer_path)
    model = model or build_backend(source, backend, device, dtype)
    greedy = settings.temperature == 0
    records = []
    for i, prompt in enumerate(prompts):
        ids = tok.encode(prompt) or [tok.eos_id]
        for j in range(settings.num_samples):
            seed = settings.seed + i * settings.num_samples + j
            out = sampling.generate(
                model, ids, settings.max_tokens, 1.0 if greedy else settings.temperature,
                1 if greedy else settings.top_k, seed, top_p=1.0 if greedy else settings.top_p, stop_id=tok.eos_id,
            )
            records.append({"prompt": prompt, "text": tok.decode(out), "tokens": len(out), "seed": seed,
                            "backend": model.name, "dtype": model.dtype})
    return records


def read_prompts(args: argparse.Namespace, source: Source) -> list[str]:
    prompts = list(args.prompt or [])
    for name in args.prompt_file or []:
        try:
            prompts.append(sys.stdin.read() if name == "-" else Path(name).expanduser().read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise LocaltrainError(
                f"--prompt-file {name}: cannot read it as UTF-8 text ({exc}). Give a readable text file, or - for"
                " standard input."
            ) from None
    if prompts:
        return prompts
    run = source.run_config
    return list(run.train.sample_prompts) if run is not None else ["\n"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run directory, one of its checkpoint directories, or an export")
    p.add_argument("--checkpoint", default=None, metavar="best|latest|step-N", help=CHECKPOINT_HELP)
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="a prompt (repeatable); default: the run's train.sample_prompts")
    p.add_argument("--prompt-file", action="append", metavar="FILE",
                   help="a file whose whole text is one prompt (repeatable; - reads standard input)")
    s = Settings()
    p.add_argument("--max-tokens", type=int, default=s.max_tokens, metavar="N", help="tokens to generate per sample")
    p.add_argument("--temperature", type=float, default=s.temperature, help="sampling temperature; 0 is greedy")
    p.add_argument("--top-k", type=int, default=s.top_k, metavar="K", help="sample among the K most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=s.top_p, metavar="P",
                   help="then among the most likely tokens holding P of the probability (1: all)")
    p.add_argument("--seed", type=int, default=s.seed, help="the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=s.num_samples, metavar="N", help="samples per prompt")
    add_model_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object per sample instead of plain text")


def main(args: argparse.Namespace) -> int:
    source = load_source(Path(args.run), args.checkpoint, use="sampled")
    settings = Settings(args.max_tokens, args.temperature, args.top_k, args.top_p, args.seed, args.num_samples)
    records = sample(source, read_prompts(args, source), settings, args.backend, args.device, dtype=args.dtype)
    for r in records:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            print(f"--- seed {r['seed']}, {r['tokens']} tokens from {source.origin} ({r['backend']}, {r['dtype']})")
            print(r["prompt"] + r["text"])
    return 0
