"""SIGKILL at random moments of runs, checkpoint writes, exports and preparations (21 kill points).

After every kill the same command runs again (a run with `--resume auto`); the chain of
killed and resumed processes must end with the same bytes as one that was never
killed. The moments come from SEED (printed; rerun with LOCALTRAIN_FAULT_SEED).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from fault_helpers import SEED, tree

from conftest import SHARED_DATA, TINY, last_step, localtrain, sets, start_localtrain, wait_for

# Wide enough that a checkpoint (about 10 MB with its moments) takes a while to write.
SHAPE = TINY + ["model.n_embd=128", "model.n_head=4", "model.n_layer=4", "train.batch_size=4",
                "train.checkpoint_every=3", "train.eval_every=6", "train.keep_checkpoints=2",
                "train.sample_every=0", "run.threads=1", "train.dtype=float32"]
pytestmark = pytest.mark.slow  # (still run by CI: the suite runs every test)
RUN_KILLS, CHECKPOINT_KILLS, EXPORT_KILLS, PREPARE_KILLS = 5, 4, 6, 6  # 21


def kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def test_kills_during_runs_and_checkpoint_writes_resume_to_the_same_bytes(tmp_path, code_corpus, cache_dir) -> None:
    rng = random.Random(SEED)
    steps = 24
    args = ["run", "--data", str(code_corpus), "--max-steps", str(steps), *sets(SHAPE)]
    straight = localtrain([*args, "--run-dir", "straight"], tmp_path, cache_dir)
    assert straight.returncode == 0, straight.stderr
    run_dir, ckpts = tmp_path / "k", tmp_path / "k" / "checkpoints"
    landed: list[str] = []
    plan = ["training", "checkpoint", "moment", "checkpoint", "training", "checkpoint", "moment", "checkpoint",
            "training"]
    assert plan.count("checkpoint") == CHECKPOINT_KILLS and len(plan) == RUN_KILLS + CHECKPOINT_KILLS
    for what in plan:
        proc = start_localtrain([*args, "--run-dir", "k", "--resume", "auto"], tmp_path, cache_dir)
        if last_step(run_dir) + 6 >= steps:
            what = "moment"  # too near the end to wait for more
        if what == "checkpoint":
            # While this process writes a checkpoint: its temporary directory is there, not yet renamed.
            mine = f"-{proc.pid}"
            wait_for(lambda: ckpts.is_dir() and any(p.name.startswith(".tmp-step-") and p.name.endswith(mine)
                                                    for p in ckpts.iterdir()), timeout=300, proc=proc)
        elif what == "training":
            target = last_step(run_dir) + rng.randint(2, 5)
            wait_for(lambda: last_step(run_dir) >= target, timeout=300, proc=proc)
        else:
            time.sleep(rng.uniform(0.0, 2.0))  # anywhere: start-up, the data check, the plan, the first steps
        kill(proc)
        landed.append(f"{what} ({last_step(run_dir)} steps logged)")
    print(f"seed {SEED}: {len(landed)} kills: {landed}")
    done = localtrain([*args, "--run-dir", "k", "--resume", "auto"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr
    final = f"checkpoints/step-{steps:08d}"
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (run_dir / final / name).read_bytes() == (tmp_path / "straight" / final / name).read_bytes(), landed
    assert not [p for p in ckpts.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def timed(args: list[str], cwd: Path, cache: Path) -> float:
    start = time.monotonic()
    done = localtrain(args, cwd, cache)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - start


def test_kills_during_exports_rerun_to_the_same_files(trained_run, tmp_path, cache_dir) -> None:
    rng = random.Random(SEED + 1)
    seconds = timed(["export", str(trained_run), "--out", "ref"], tmp_path, cache_dir)
    timed(["export", str(trained_run), "--out", "x", "--checkpoint", "step-10"], tmp_path, cache_dir)
    moments = []
    for _ in range(EXPORT_KILLS):  # each replaces the export left by the one before (or its remains)
        proc = start_localtrain(["export", str(trained_run), "--out", "x", "--force"], tmp_path, cache_dir)
        moments.append(round(rng.uniform(0.0, seconds), 3))
        time.sleep(moments[-1])
        kill(proc)
    print(f"seed {SEED}: export kills after {moments} s (an export takes {seconds:.2f} s)")
    timed(["export", str(trained_run), "--out", "x", "--force"], tmp_path, cache_dir)
    assert tree(tmp_path / "x", skip=(".localtrain",)) == tree(tmp_path / "ref", skip=(".localtrain",))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_kills_during_a_preparation_rerun_to_the_same_bytes(tmp_path, cache_dir) -> None:
    corpus = SHARED_DATA / "wikitext-2"  # two files of 1.1 and 1.3 MB: a commit after each
    if not corpus.is_dir():
        pytest.skip(f"needs ../shared/data beside the repository ({corpus} is absent)")
    rng = random.Random(SEED + 2)
    args = ["prepare", "--preset", "tiny-shakespeare", "--data", str(corpus), "--workers", "1",
            *sets(["data.tokenizer=char", "data.character_coverage=1.0", "data.document_bytes=8192"])]
    seconds = timed([*args, "--out", "ref"], tmp_path, cache_dir)
    moments = []
    for _ in range(PREPARE_KILLS):
        proc = start_localtrain([*args, "--out", "p"], tmp_path, cache_dir)
        moments.append(round(rng.uniform(0.0, seconds), 3))
        time.sleep(moments[-1])
        kill(proc)
    print(f"seed {SEED}: prepare kills after {moments} s (a preparation takes {seconds:.2f} s)")
    timed([*args, "--out", "p"], tmp_path, cache_dir)
    skip = (".lock", ".localtrain", "manifest.json")
    assert tree(tmp_path / "p", skip=skip) == tree(tmp_path / "ref", skip=skip)
