"""Benchmark of progressive phases: how soon training starts, and what preparing beside it costs.

    python3 scripts/bench_phases.py [DUMP.xml.bz2] [--repeat 10] [--after 15]

Builds a synthetic dump (each page of DUMP repeated --repeat times with its own title
and last line), then runs `localtrain run` on it twice from an empty cache: once
without phases (the whole dump is prepared first) and once with data.phases (training
starts on phase 1 while a separate process prepares the rest). Each run is stopped
with SIGINT --after seconds after its preparation and its first step have both
happened. Prints, for each: seconds from launch to the first step and to the end of
the preparation, and training tokens/s while the preparation ran and after it.
"""

from __future__ import annotations

import argparse
import bz2
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import DEFAULT, synthetic  # noqa: E402

OVERRIDES = [
    "model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.seq_len=128",
    "data.vocab_size=4096", "data.tokenizer_sample_bytes=2000000",
    "train.batch_size=16", "train.max_steps=100000", "train.eval_every=200", "train.sample_every=0",
    "train.checkpoint_every=500", "train.log_every=1",
]


def events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def run(dump: Path, work: Path, phases: str | None, after: float) -> dict[str, float]:
    cache = work / f"cache-{'phased' if phases else 'whole'}"
    run_dir = work / f"run-{'phased' if phases else 'whole'}"
    sets = [*OVERRIDES, *([f"data.phases={phases}"] if phases else [])]
    cmd = [sys.executable, "-m", "localtrain", "run", "--data", str(dump), "--run-dir", str(run_dir),
           *[a for o in sets for a in ("--set", o)]]
    env = {**os.environ, "LOCALTRAIN_CACHE": str(cache)}
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ev_path = run_dir / "events.jsonl"
    while True:
        evs = events(ev_path)
        first = next((e["time"] for e in evs if e["type"] == "step"), None)
        done = next((e["time"] for e in evs if e["type"] == "prepare" and e.get("stage") == "done"), None)
        if first and done and time.time() - max(first, done) >= after:
            break
        if proc.poll() is not None:
            raise SystemExit(f"localtrain run exited early:\n{proc.stderr.read()}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.wait()
    steps = [e for e in events(ev_path) if e["type"] == "step"]

    def rate(lo: float, hi: float) -> float:
        inside = [e for e in steps if lo <= e["time"] <= hi]
        if len(inside) < 2:
            return float("nan")
        return (inside[-1]["tokens"] - inside[0]["tokens"]) / (inside[-1]["time"] - inside[0]["time"])

    return {
        "first_step_s": first - start,
        "prepared_s": done - start,
        "tok_s_while_preparing": rate(first, done),
        "tok_s_after": rate(done, float("inf")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dump", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--phases", default="[100,400]")
    ap.add_argument("--after", type=float, default=15.0)
    args = ap.parse_args()
    if not args.dump.is_file():
        raise SystemExit(f"{args.dump} is not a file: give a MediaWiki dump (.xml.bz2).")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        xml = bz2.decompress(args.dump.read_bytes())
        size = synthetic(xml, args.repeat, work / "dump.xml")
        print(f"synthetic dump: {size / 1e6:.1f} MB of XML ({args.repeat} copies of {args.dump.name})")
        whole = run(work / "dump.xml", work, None, args.after)
        phased = run(work / "dump.xml", work, args.phases, args.after)
    print(f"{'':28}{'whole first':>14}{'phases ' + args.phases:>18}")
    for key, label in (("first_step_s", "launch to first step (s)"), ("prepared_s", "launch to data prepared (s)"),
                       ("tok_s_while_preparing", "tok/s while preparing"), ("tok_s_after", "tok/s after preparing")):
        print(f"{label:28}{whole[key]:>14.1f}{phased[key]:>18.1f}")
    print(f"first step {whole['first_step_s'] / phased['first_step_s']:.1f}x sooner with phases; training "
          f"while preparing runs at {phased['tok_s_while_preparing'] / phased['tok_s_after']:.2f}x its speed after")


if __name__ == "__main__":
    main()
