#!/usr/bin/env bash
# Every check that needs an NVIDIA GPU, in one command from the repository root:
#   1. install localtrain (editable, no downloads) and the wheels in .whl/ (if any) under /tmp;
#   2. print the GPU (nvidia-smi) and the library versions;
#   3. the tests marked requires_cuda;
#   4. the tuner on gpt2-124m from empty caches: what it costs, and each candidate's peak
#      beside the memory model's prediction (bench_tune.py);
#   5. the training-step benchmark: localtrain beside the GPT-2 baseline on the same shape (bench_train.py);
#   6. MLX's compiled step beside torch's on the same GPU (bench_train.py --backend mlx), where
#      MLX's wheels are in .whl/.
# GPU_CHECK_BENCH_ARGS: more arguments for step 5's bench_train.py (e.g. --models localtrain).
# Everything printed also goes to $OUT/gpu_check.log, with each stage's own log and JSON
# beside it. The stages share a time budget (GPU_CHECK_BUDGET_S, 470 s): each gets at most
# what is left, so the whole script ends within the budget and keeps what it measured.
# For a rehearsal of the script itself on a machine without a GPU: GPU_CHECK_DEVICE=cpu,
# GPU_CHECK_SHAPE=a small preset or TOML file, GPU_CHECK_PYTHON=an interpreter that has
# localtrain, GPU_CHECK_INSTALL=0.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-check-out}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
SHAPE=${GPU_CHECK_SHAPE:-gpt2-124m}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PY=${GPU_CHECK_PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
stage() { echo; echo "=== [$(elapsed) s] $*"; }
# remaining CAP: seconds a stage may take, at most CAP and what the budget leaves (minus 10 s to wrap up).
remaining() { local left=$(( BUDGET - $(elapsed) - 10 )); echo $(( left < $1 ? left : $1 )); }

stage "install"
if [ "${GPU_CHECK_INSTALL:-1}" = 0 ]; then echo "skipped (GPU_CHECK_INSTALL=0)"; else
$PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || { echo "install failed"; exit 1; }
# The wheels in .whl/ go to /tmp/site; MLX's to /tmp/site-mlx, on the path of the MLX stage
# alone, so that nothing else in this script loads a second CUDA framework.
if ls .whl/*.whl >/dev/null 2>&1; then
    others=$(ls .whl/*.whl | grep -v '/mlx')
    mlx_wheels=$(ls .whl/*.whl | grep '/mlx' || true)
    if [ -n "$others" ]; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $others \
            || { echo "installing .whl/ failed"; exit 1; }
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    if [ -n "$mlx_wheels" ]; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-mlx \
            $mlx_wheels || echo "installing MLX's wheels failed: the MLX stage will say so"
        # MLX's CUDA library looks for the CUDA libraries and headers beside its own package:
        # point it at those of torch's site-packages.
        nvidia=$($PY -c "import os, torch; print(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), 'nvidia'))")
        if [ -d "$nvidia" ] && [ ! -e /tmp/site-mlx/nvidia ]; then ln -s "$nvidia" /tmp/site-mlx/nvidia; fi
    fi
fi
fi
MLX_PATH=/tmp/site-mlx${PYTHONPATH:+:$PYTHONPATH}

stage "versions"
nvidia-smi
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu \
    --format=csv
PYTHONPATH=$MLX_PATH $PY - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}; torch {torch.__version__}, CUDA {torch.version.cuda},"
      f" cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    print(f"{torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()},"
          f" {torch.cuda.get_device_properties(0).multi_processor_count} SMs")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError:
    print("triton: not installed")
try:
    import mlx.core as mx
    print(f"mlx {mx.__version__}; default device {mx.default_device()}; cuda available {mx.cuda.is_available()}")
except Exception as exc:  # the MLX stage reports its own failure
    print(f"mlx: {type(exc).__name__}: {exc}")
EOF

stage "tests marked requires_cuda"
cap=$(remaining 130)
if [ "$cap" -gt 30 ]; then
    # Only the files that carry the mark are collected: the rest of the suite's imports are not needed here.
    files=$(grep -rl --include='test_*.py' 'requires_cuda' tests)
    timeout "$cap" $PY -m pytest -v -m requires_cuda -p no:cacheprovider --durations=8 $files 2>&1 \
        | tee "$OUT/pytest.log"
    echo "pytest exit status: $?"
else
    echo "skipped: the time budget is spent"
fi

stage "the tuner on $SHAPE from empty caches"
cap=$(remaining 200)
if [ "$cap" -gt 60 ]; then
    timeout "$cap" $PY scripts/bench_tune.py --preset "$SHAPE" --out "$OUT/tune.json" 2>&1 | tee "$OUT/tune.log"
    echo "tuner benchmark exit status: $?"
else
    echo "skipped: the time budget is spent"
fi

stage "training-step benchmark, $SHAPE, localtrain beside the GPT-2 baseline"
cap=$(remaining 260)
if [ "$cap" -gt 70 ]; then
    # No new row after cap - 60 s; the timeout stops a row that runs long.
    # Rows run in order of need: compiled (localtrain, then the baseline), then eager.
    timeout "$cap" $PY scripts/bench_train.py --device "$DEVICE" --shape "$SHAPE" --budget-s $(( cap - 60 )) --row-s 6 \
        --out "$OUT/bench_torch.json" ${GPU_CHECK_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_torch.log"
    echo "benchmark exit status: $?"
else
    echo "skipped: the time budget is spent"
fi

stage "MLX beside torch, $SHAPE, micro-batch 12"
cap=$(remaining 100)
if ! ls .whl/mlx*.whl >/dev/null 2>&1 && [ "$DEVICE" = cuda ]; then
    echo "skipped: no MLX wheels in .whl/"
elif [ "$cap" -gt 40 ]; then
    PYTHONPATH=$MLX_PATH timeout "$cap" $PY scripts/bench_train.py --device "$DEVICE" --shape "$SHAPE" --backend mlx --micro 12 \
        --out "$OUT/bench_mlx.json" 2>&1 | tee "$OUT/bench_mlx.log"
    echo "MLX benchmark exit status: $?"
else
    echo "skipped: the time budget is spent"
fi
stage "summary"
OUT="$OUT" $PY - <<'EOF'
import json, os
from pathlib import Path

out = Path(os.environ["OUT"])


def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


bench = load("bench_torch.json")
if bench:
    print(bench.get("device", "?"))
    rows = {(r["model"], r["mode"], r["micro"]): r for r in bench["rows"]}
    for (model, mode, micro), r in rows.items():
        if model != "localtrain":
            continue
        g = rows.get(("gpt2", mode, micro))
        pub = f"{r['mfu_published']:.1%}" if r.get("mfu_published") else "-"
        mem = f", memory {r['memory_error']:+.1%} against the planner" if "memory_error" in r else ""
        pieces = f" as {g['accum']} x {micro // g['accum']}" if g and g["accum"] > 1 else ""
        print(f"{mode:8} micro {micro:>3}: localtrain {r['tok_s']:,.0f} tok/s (MFU {pub} of published)"
              + (f", GPT-2{pieces} {g['tok_s']:,.0f} tok/s: {r['tok_s'] / g['tok_s']:.2f}x" if g else "") + mem)
    for mode, f in bench.get("memory_fit", {}).items():
        print(f"{mode:8} memory: measured {f['fixed'] / 2**30:.2f} GiB + {f['per_sample'] / 2**20:.0f} MiB a"
              f" sequence, planner {f['planner_fixed'] / 2**30:.2f} GiB + {f['planner_per_sample'] / 2**20:.0f} MiB")
tune = load("tune.json")
if tune:
    print(f"tuner: {len(tune['rows'])} candidates in {tune['tuning_s']:.0f} s, picked {tune['pick']}; peak against the"
          " memory model: " + ", ".join(f"{r['error']:+.1%}" for r in tune["rows"] if r["error"] is not None))
mlx = load("bench_mlx.json")
if mlx and "ratio" in mlx:
    print(f"MLX / torch at micro-batch {mlx['micro']}: {mlx['ratio']:.2f}x"
          f" ({mlx['rows']['mlx']['tok_s']:,.0f} / {mlx['rows']['torch']['tok_s']:,.0f} tok/s)")
log = out / "pytest.log"
if log.exists():
    words = (" passed", " failed", " error", " skipped", " deselected")
    lines = [line for line in log.read_text().splitlines() if line.startswith("=") and any(w in line for w in words)]
    print("pytest:", lines[-1] if lines else "no result line")
EOF
stage "done"
