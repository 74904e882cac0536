"""A real full disk and a real read-only one: a small tmpfs, where this machine lets the tests mount one.

The run fills the disk's last bytes (another program takes them), stops with a clear
error and every checkpoint it wrote still verifies; on the same disk remounted
read-only a resume is refused with a message and changes nothing; with space again it
resumes to the same weights as a run that never stopped.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fault_helpers import tree

from conftest import TINY, localtrain, sets, start_localtrain, wait_for
from localtrain import checkpoint

pytestmark = pytest.mark.slow  # (still run by CI: the suite runs every test)
ARGS = TINY + ["train.checkpoint_every=5", "train.sample_every=0", "run.threads=1", "train.dtype=float32"]


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path: Path):
    """An 8 MB tmpfs mounted at tmp_path/disk (skips, with the reason, where mounting is not allowed)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8); the write-layer faults cover ENOSPC/EROFS here")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = _mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk))
    if done.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs ({done.stderr.strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk`, as another program would."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_then_read_only_disk_stops_clearly_and_resumes_exactly(small_disk, tmp_path, code_corpus,
                                                                      cache_dir) -> None:
    args = ["run", "--data", str(code_corpus), "--max-steps", "30", *sets(ARGS)]
    run_dir = small_disk / "r"
    proc = start_localtrain([*args, "--run-dir", str(run_dir)], tmp_path, cache_dir)
    wait_for(lambda: (run_dir / "checkpoints" / "step-00000005" / "COMPLETE").exists(), timeout=300, proc=proc)
    filler = fill(small_disk)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "No space left while" in err and str(small_disk) in err and "free on that filesystem" in err, err
    for path in checkpoint.complete_checkpoints(run_dir):
        checkpoint.load(path)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")]

    filler.unlink()
    assert _mount("-o", "remount,ro", str(small_disk)).returncode == 0
    before = tree(run_dir)
    refused = localtrain(["run", "--resume", "--run-dir", str(run_dir)], tmp_path, cache_dir)
    assert refused.returncode == 2 and "read-only filesystem" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and tree(run_dir) == before

    assert _mount("-o", "remount,rw", str(small_disk)).returncode == 0
    resumed = localtrain(["run", "--resume", "--run-dir", str(run_dir)], tmp_path, cache_dir)
    assert resumed.returncode == 0, resumed.stderr
    straight = localtrain([*args, "--run-dir", "straight"], tmp_path, cache_dir)
    assert straight.returncode == 0, straight.stderr
    final = "checkpoints/step-00000030/model.safetensors"
    assert (run_dir / final).read_bytes() == (tmp_path / "straight" / final).read_bytes()
