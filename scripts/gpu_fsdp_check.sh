#!/usr/bin/env bash
# FSDP on one NVIDIA GPU (NCCL, one torchrun process), in about two minutes. Prints figures:
#   1. the sharded backend against an unsharded one (fp32 without TF32: loss, clipped norm,
#      weights, moments, a loaded checkpoint, float16 with the sharded scaler, compiled bf16);
#   2. a tiny 40-step run: one plain process against one FSDP process, per-step losses;
#   3. the FSDP run killed (SIGKILL of torchrun) while writing step 30's checkpoint, then
#      `--resume --nproc 1`: per-step losses and final weights against the straight FSDP run;
#   4. the peak GPU memory of a 110M-parameter bf16 step, plain and FSDP, against the plan.
# Run from anywhere: bash scripts/gpu_fsdp_check.sh   (PYTHON=... to choose the interpreter;
# DEVICE=cpu and BENCH="..." try the same steps on a CPU with gloo). Exit status 1 if a check fails.
# Where localtrain is not installed, it runs from this checkout; the one package it needs beyond
# torch, numpy, safetensors, sentencepiece, rich and psutil is tomli_w, taken from the wheels in
# .whl/ when it is missing (as scripts/gpu_check.sh does; python3 -m pip download --no-deps -d .whl
# tomli_w==1.2.0 fetches it).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD PY=${PYTHON:-python3} DEVICE=${DEVICE:-cuda}
BENCH=${BENCH:---n-layer 12 --n-head 12 --n-embd 768 --seq-len 1024 --vocab 32768 --micro 4 --dtype bfloat16}
WORK=$(mktemp -d) && export LOCALTRAIN_CACHE=$WORK/cache PYTHONUNBUFFERED=1
FAILED=0
# On the device machine, everything printed also comes back in $OUT.
[ -n "${OUT:-}" ] && [ -d "$OUT" ] && exec > >(tee -a "$OUT/gpu_fsdp_check.log") 2>&1

if ! $PY -c "import localtrain.backends.torch_fsdp" 2>/dev/null; then
  # A bare machine: this checkout's folders laid out as the installed package, without pip.
  mkdir -p "$WORK/src/localtrain" && ln -s "$REPO"/localtrain/* "$WORK/src/localtrain/"
  for d in backends tui configs; do ln -s "$REPO/$d" "$WORK/src/localtrain/$d"; done
  export PYTHONPATH=$WORK/src${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PY -c "import tomli_w" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  # The run writes its config.toml with tomli_w: the wheels carried in .whl/ (MLX's aside), offline.
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" $(ls .whl/*.whl | grep -v /mlx)
  export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -c "import localtrain.backends.torch_fsdp, tomli_w" || { echo "localtrain or tomli_w cannot be imported"; exit 1; }
$PY -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"

echo "== 1. sharded backend against unsharded ($DEVICE, one torchrun process)"
$PY -m torch.distributed.run --nproc-per-node=1 --standalone --max-restarts=0 tests/core/fsdp_checks.py "$DEVICE" \
  >"$WORK/checks.out" 2>"$WORK/checks.err" || { tail -30 "$WORK/checks.err"; FAILED=1; }
$PY - "$WORK/checks.out" <<'EOF' || FAILED=1
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
bad = []
for mode in ("per_micro_batch", "unsharded", "checkpointing"):
    m = r[mode]
    print(f"{mode:16} |dloss| {m['loss']:.2e}  |dnorm| {m['grad_norm']:.2e}  |dweight| {m['weights']:.2e}"
          f"  |dmoment| {m['moments']:.2e}  root kept {m['root_gathered']}  grads reduced {m['sharded_grads']}")
    bad += [mode] if max(m["loss"], m["grad_norm"], m["weights"]) >= 1e-5 or m["moments"] >= 1e-7 else []
l = r["loaded"]
print(f"loaded           round trip {l['roundtrip']:.1e}  eval {l['eval']:.2e}  same generation {l['generate']}"
      f"  next step |dloss| {l['next_loss']:.2e} |dweight| {l['next_weights']:.2e}")
bad += ["loaded"] if l["roundtrip"] or l["eval"] >= 1e-6 or not l["generate"] or l["next_loss"] >= 1e-5 else []
print(f"float16 scaler   |dloss| {r['float16']:.2e} (bar 1e-2)" + (
    f"   bf16 compiled vs fp32 |dloss| {r['bf16_compiled']:.2e} (bar 5e-2)" if "bf16_compiled" in r else ""))
bad += ["float16"] if r["float16"] >= 1e-2 else []
bad += ["bf16_compiled"] if r.get("bf16_compiled", 0) >= 5e-2 else []
print("FAIL: " + ", ".join(bad) if bad else "ok")
sys.exit(1 if bad else 0)
EOF

echo "== 2. 40 steps: one process against one FSDP process; 3. SIGKILL at step 30's checkpoint, resume"
mkdir -p "$WORK/code" && $PY - "$WORK/code" <<'EOF'
import shutil, sys, sysconfig
for name in ("argparse.py", "textwrap.py", "string.py", "heapq.py", "bisect.py", "fnmatch.py", "glob.py",
             "shlex.py", "queue.py", "copy.py", "dataclasses.py", "functools.py", "enum.py", "csv.py"):
    shutil.copy(f"{sysconfig.get_paths()['stdlib']}/{name}", sys.argv[1])
EOF
ARGS=(run --data "$WORK/code" --max-steps 40 --plain --device "$DEVICE")
for s in model.n_layer=2 model.n_head=2 model.n_embd=32 model.seq_len=32 data.tokenizer=char \
  data.character_coverage=1.0 data.document_bytes=4096 train.batch_size=8 train.eval_batches=2 train.eval_every=10 \
  train.sample_every=10 train.sample_tokens=16 train.warmup_steps=5 train.lr=3e-3 train.checkpoint_every=10 \
  train.log_every=1 run.autotune=off train.dtype=float32 run.compile=off; do ARGS+=(--set "$s"); done
FSDP=(--set run.parallel=fsdp)
cd "$WORK"
$PY -m localtrain "${ARGS[@]}" --run-dir one >one.log 2>&1 || { tail -20 one.log; FAILED=1; }
$PY -m localtrain "${ARGS[@]}" "${FSDP[@]}" --run-dir fsdp --nproc 1 >fsdp.log 2>&1 || { tail -20 fsdp.log; FAILED=1; }
# Launched as `localtrain run --nproc 1` does, with a worker that stops inside step 30's checkpoint write.
PAUSE_AT_STEP=30 PAUSE_MARKER=$WORK/paused $(command -v setsid) $PY -m torch.distributed.run --nproc-per-node=1 --standalone \
  --max-restarts=0 "$REPO/tests/core/pause_in_checkpoint.py" "${ARGS[@]}" "${FSDP[@]}" --run-dir killed >killed.log 2>&1 &
LAUNCHER=$!
for _ in $(seq 600); do [ -e paused ] || ! kill -0 $LAUNCHER 2>/dev/null && break; sleep 0.2; done
[ -e paused ] || { echo "the run never reached step 30's checkpoint"; tail -20 killed.log; FAILED=1; }
{ kill -9 $LAUNCHER; sleep 1; kill -9 -- -$LAUNCHER; wait $LAUNCHER; } 2>/dev/null
$PY -m localtrain run --resume --run-dir killed --nproc 1 --plain >resumed.log 2>&1 || { tail -20 resumed.log; FAILED=1; }
$PY - <<'EOF' || FAILED=1
import json, sys
from pathlib import Path

import numpy as np
from localtrain.checkpoint import load

def losses(run):
    events = [json.loads(x) for x in open(f"{run}/events.jsonl") if x.strip()]
    return {e["step"]: e["loss"] for e in events if e["type"] == "step"}, [e for e in events if e["type"] == "plan"]

(one, _), (fsdp, plans), (killed, kplans) = losses("one"), losses("fsdp"), losses("killed")
final = "checkpoints/step-00000040"
a, b, c = (load(Path(run) / final) for run in ("one", "fsdp", "killed"))
parity = max(abs(one[k] - fsdp[k]) for k in one)
wparity = max(float(np.abs(a.weights[k] - b.weights[k]).max()) for k in a.weights)
print(f"one vs FSDP ({plans[0]['parallel']}, {plans[0]['device']}, world {plans[0]['world_size']}): 40 steps,"
      f" max |dloss| {parity:.2e} (bar 1e-5), max |dweight| at step 40 {wparity:.2e}")
same = killed == fsdp
resume = max(abs(killed[k] - fsdp[k]) for k in fsdp)
wresume = max(float(np.abs(b.weights[k] - c.weights[k]).max()) for k in b.weights)
mresume = max(float(np.abs(b.moments[k] - c.moments[k]).max()) for k in b.moments)
print(f"resumed from step {kplans[-1]['resumed_from']} ({kplans[-1]['parallel']}): per-step losses identical: {same};"
      f" max |dloss| {resume:.2e}; final weights bitwise equal: {open(f'fsdp/{final}/model.safetensors', 'rb').read() == open(f'killed/{final}/model.safetensors', 'rb').read()},"
      f" max |dweight| {wresume:.2e}, max |dmoment| {mresume:.2e}")
ok = (sorted(one) == sorted(fsdp) == list(range(1, 41)) and parity < 1e-5 and plans[0]["parallel"] == "fsdp"
      and kplans[-1]["resumed_from"] == 20 and resume < 1e-5 and wresume < 1e-5)
print("ok" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
cd "$REPO"

echo "== 4. peak memory of a step, plain and FSDP, against the plan ($BENCH)"
# shellcheck disable=SC2086
$PY scripts/bench_fsdp.py --device "$DEVICE" --nproc 1 $BENCH || FAILED=1
rm -rf "$WORK"
echo "gpu_fsdp_check: $([ $FAILED = 0 ] && echo all checks passed || echo A CHECK FAILED)"
exit $FAILED
