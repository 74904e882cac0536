"""How long a new user waits: `localtrain run` (the default preset) from a cold cache.

Starts the real CLI in a subprocess with an empty cache directory (so the corpus is
read, the tokenizer trained, the tokens encoded and the matmul peak measured), and
prints the seconds from launch to each milestone: data prepared, first step, first
eval, first live sample, and the val loss at the evaluations seen.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="stop the run after this many steps")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LOCALTRAIN_CACHE": os.path.join(tmp, "cache")}
        start = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "localtrain", "run", "--max-steps", str(args.steps), "--plain"],
            cwd=tmp, env=env, capture_output=True, text=True,
        )
        if proc.returncode:
            raise SystemExit(proc.stderr)
        (run_dir,) = Path(tmp, "runs").iterdir()
        events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]

    def first(kind: str, **match) -> dict:
        return next(e for e in events if e["type"] == kind and all(e.get(k) == v for k, v in match.items()))

    rows = [
        ("data prepared", first("prepare", stage="done")),
        ("plan (model built, peak measured)", first("plan")),
        ("step 1", first("step")),
        ("first live sample", first("sample")),
    ]
    print(f"localtrain run (python-stdlib preset), cold cache, {os.cpu_count()} CPUs")
    for name, e in rows:
        extra = f"  (step {e['step']})" if "step" in e else ""
        print(f"{name:36} {e['time'] - start:7.1f} s{extra}")
    for e in (e for e in events if e["type"] == "eval"):
        print(f"eval at step {e['step']:<5}{'':22} {e['time'] - start:7.1f} s  val loss {e['val_loss']:.3f}")
    steps = [e for e in events if e["type"] == "step"]
    print(f"mean training throughput: {sum(s['tokens_per_s'] for s in steps) / len(steps):,.0f} tok/s")


if __name__ == "__main__":
    main()
