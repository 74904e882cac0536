"""Shared fixtures: an isolated cache, a small real code corpus, and a CLI runner."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Modules copied from this Python's standard library: ~300 KB of real code.
CORPUS_MODULES = [
    "argparse.py", "textwrap.py", "string.py", "heapq.py", "bisect.py", "fnmatch.py", "glob.py",
    "shlex.py", "queue.py", "copy.py", "dataclasses.py", "functools.py", "enum.py", "csv.py",
]

# A model small enough that a step takes milliseconds on two cores.
TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.seq_len=32",
    "data.tokenizer=char", "data.character_coverage=1.0", "data.document_bytes=4096",
    "train.batch_size=8", "train.eval_batches=2", "train.eval_every=10", "train.sample_every=10",
    "train.sample_tokens=16", "train.warmup_steps=5", "train.lr=3e-3", "train.checkpoint_every=10",
    "train.log_every=1",
    # The tuner is tested on its own (tests/core/test_tuner.py); these runs keep the defaults it
    # would otherwise measure, so that the suite's figures do not depend on the machine's speed.
    "run.autotune=off",
]
# The CPU dtype the suite's runs train in when they do not pin one: LOCALTRAIN_TEST_DTYPE=bfloat16
# (on a CPU that computes it natively) or float32 runs the whole suite in that dtype.
FORCED_DTYPE = os.environ.get("LOCALTRAIN_TEST_DTYPE", "")
FORCED = [f"train.dtype={FORCED_DTYPE}"] if FORCED_DTYPE else []
TINY += FORCED
# Tests that compare figures across processes, micro-batches or backends pin float32: bf16
# rounding differs with the micro-batch and between frameworks.
FP32 = ["train.dtype=float32"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def isolated_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or write the user's ~/.cache/localtrain."""
    monkeypatch.setenv("LOCALTRAIN_CACHE", str(cache_dir))


@pytest.fixture(scope="session")
def code_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("code")
    for name in CORPUS_MODULES:
        (root / name).write_bytes((STDLIB / name).read_bytes())
    return root


def need(path: Path) -> Path:
    """`path`, a file of the shared data (SHARED_DATA); the test is skipped where it is absent."""
    if not path.is_file():
        pytest.skip(f"needs ../shared/data beside the repository ({path} is absent)")
    return path


@pytest.fixture
def shakespeare() -> Path:
    return need(SHARED_DATA / "tinyshakespeare" / "input.txt")


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory, for tests that run the CLI in this process."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "LOCALTRAIN_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}


def localtrain(args: list[str], cwd: Path, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "localtrain", *args], cwd=cwd, env=cli_env(cache),
        capture_output=True, text=True, timeout=timeout,
    )


def start_localtrain(args: list[str], cwd: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "localtrain", *args], cwd=cwd, env=cli_env(cache),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(predicate, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    """Poll every millisecond until `predicate()` holds; fail if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited with {proc.returncode} first:\n{out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.001)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_jsonl_tolerant(path: Path) -> list[dict]:
    """The complete lines of a file another process may be writing (none if it does not exist yet)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line still being written
    return out


def step_losses(run_dir: Path) -> dict[int, float]:
    """Per-step losses; after a resume the re-run of a step replaces the killed one's."""
    return {e["step"]: e["loss"] for e in read_jsonl(run_dir / "events.jsonl") if e["type"] == "step"}


def last_step(run_dir: Path) -> int:
    """The newest step a (running) run has logged, 0 before the first."""
    return max((e["step"] for e in read_jsonl_tolerant(run_dir / "events.jsonl") if e["type"] == "step"), default=0)


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def torchrun_failure(stderr: str, rank: int) -> str:
    """torchrun's closing summary of one rank's failure ("" if it has none). The summary lists every
    failed rank; the one it calls the root cause is the earliest by a timestamp in whole seconds, so a
    rank that fails in the same second because its peer died can take that place."""
    starts = [stderr.find(title) for title in ("Failures:", "Root Cause") if title in stderr]
    blocks = re.split(r"\n\s*\[\d+\]:\n", stderr[min(starts):]) if starts else []
    return next((b for b in blocks if re.search(rf"^\s*rank\s*:\s*{rank}\b", b, re.M)), "")


# A bpe vocabulary and grouped-query attention: the shapes an export must carry over.
# Weights of init_std 0.2 make attention far from uniform, so the logits depend on the positions
# (at the default 0.02, doubling rope_theta moved them by 7e-5, below the export tests' 1e-4);
# a rope_theta other than the default shows where an export or a loader forgets it.
TRAINED = TINY + FP32 + ["data.tokenizer=bpe", "data.vocab_size=600", "data.character_coverage=0.9995",
                         "model.n_kv_head=1", "model.init_std=0.2", "model.rope_theta=500"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, code_corpus: Path, cache_dir: Path) -> Path:
    """A finished 20-step torch run on the code corpus, with checkpoints at 10 and 20 and best/."""
    root = tmp_path_factory.mktemp("trained")
    done = localtrain(
        ["run", "--data", str(code_corpus), "--max-steps", "20", "--run-dir", "run", "--backend", "torch",
         *sets(TRAINED)],
        root, cache_dir,
    )
    assert done.returncode == 0, done.stderr
    return root / "run"
