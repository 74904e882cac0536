"""Checkpoints on disk: layout, verification, keep-last-k, and what a broken one does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from localtrain import checkpoint, ownership
from localtrain.errors import CheckpointError
from localtrain.ownership import NotOurs


def arrays(seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    w = {"model.norm.weight": rng.standard_normal(8).astype(np.float32),
         "model.embed_tokens.weight": rng.standard_normal((16, 8)).astype(np.float32)}
    m = {f"{k}.{s}": rng.standard_normal(v.shape).astype(np.float32) for k, v in w.items()
         for s in ("exp_avg", "exp_avg_sq")}
    return w, m


def test_layout_and_round_trip(tmp_path) -> None:
    w, m = arrays(0)
    path, size = checkpoint.save(tmp_path, 123, w, m, {"tokens": 5, "rng": {"a": "b"}}, keep=3)
    assert path == tmp_path / "checkpoints" / "step-00000123"
    assert sorted(p.name for p in path.iterdir()) == ["COMPLETE", "model.safetensors", "optimizer.safetensors",
                                                      "state.json"]
    assert size == sum((path / n).stat().st_size for n in ("model.safetensors", "optimizer.safetensors"))
    state = json.loads((path / "state.json").read_text())
    assert state["step"] == 123 and state["format"] == checkpoint.FORMAT
    assert set(state["files"]) == {"model.safetensors", "optimizer.safetensors"}
    loaded = checkpoint.load(path)
    assert all(np.array_equal(loaded.weights[k], w[k]) for k in w)
    assert all(np.array_equal(loaded.moments[k], m[k]) for k in m)
    assert loaded.state["tokens"] == 5
    # The tensor files are plain safetensors: no pickle, readable by any safetensors client.
    assert (path / "model.safetensors").read_bytes()[8:9] == b"{"


def test_only_the_newest_k_are_kept(tmp_path) -> None:
    w, m = arrays(0)
    for step in (10, 20, 30, 40):
        checkpoint.save(tmp_path, step, w, m, {}, keep=2)
    assert [checkpoint.step_of(p) for p in checkpoint.complete_checkpoints(tmp_path)] == [30, 40]


def test_a_directory_without_marker_is_not_a_checkpoint(tmp_path) -> None:
    w, m = arrays(0)
    path, _ = checkpoint.save(tmp_path, 10, w, m, {}, keep=5)
    half = tmp_path / "checkpoints" / "step-00000020"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    assert checkpoint.complete_checkpoints(tmp_path) == [path]
    with pytest.raises(CheckpointError, match="no COMPLETE marker"):
        checkpoint.load(half)


def test_a_truncated_file_is_detected_and_skipped_with_a_warning(tmp_path) -> None:
    w, m = arrays(0)
    old, _ = checkpoint.save(tmp_path, 10, w, m, {}, keep=5)
    w2, m2 = arrays(1)
    new, _ = checkpoint.save(tmp_path, 20, w2, m2, {}, keep=5)
    target = new / "optimizer.safetensors"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors is \d+ bytes but was written as \d+ bytes"):
        checkpoint.load(new)
    warnings: list = []
    loaded = checkpoint.load_latest(tmp_path, warnings.append)
    assert loaded is not None and loaded.path == old
    assert len(warnings) == 1 and "step-00000020" in warnings[0].message and "truncated" in warnings[0].message
    # Nothing is written over: the broken file stays as it was for the user to inspect.
    assert target.read_bytes() == data[: len(data) // 2]


def test_a_damaged_file_of_the_right_size_fails_its_hash(tmp_path) -> None:
    w, m = arrays(0)
    path, _ = checkpoint.save(tmp_path, 10, w, m, {}, keep=5)
    target = path / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        checkpoint.load(path)
    assert checkpoint.load_latest(tmp_path, lambda e: None) is None


def test_stale_temporary_directories_are_removed(tmp_path) -> None:
    (tmp_path / "checkpoints" / ".tmp-step-00000030-999").mkdir(parents=True)
    (tmp_path / ".tmp-best-999").mkdir()
    (tmp_path / ".tmp-mine").mkdir()  # named like a temporary directory, but not as a checkpoint's
    with pytest.raises(NotOurs):  # only inside a run directory localtrain marked
        checkpoint.remove_stale_temps(tmp_path)
    ownership.write_marker(tmp_path, "run")
    removed = checkpoint.remove_stale_temps(tmp_path)
    assert len(removed) == 2 and not any(p.exists() for p in removed)
    assert (tmp_path / ".tmp-mine").is_dir()


def test_best_is_replaced_atomically(tmp_path) -> None:
    w, _ = arrays(0)
    checkpoint.save_best(tmp_path, w, {"val_loss": 2.0})
    w2, _ = arrays(1)
    checkpoint.save_best(tmp_path, w2, {"val_loss": 1.5})
    loaded = checkpoint.load(tmp_path / "best")
    assert loaded.state["val_loss"] == 1.5
    assert np.array_equal(loaded.weights["model.norm.weight"], w2["model.norm.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


@pytest.mark.skipif(sys.platform == "win32", reason="forks a child per kill point")
def test_a_kill_anywhere_inside_save_best_leaves_a_best_that_verifies(tmp_path) -> None:
    """A real process SIGKILLed before each of save_best's file-system calls in turn (writing,
    syncing, renaming, removing): best/ verifies after every kill, holding the old weights or
    the new, and still does once the leftovers of the killed write are cleared."""
    old, _ = arrays(0)
    new, _ = arrays(1)
    template = tmp_path / "template"
    template.mkdir()
    ownership.write_marker(template, "run")  # a run directory localtrain made
    checkpoint.save_best(template, old, {"val_loss": 2.0})
    save_file(new, str(tmp_path / "new.safetensors"))
    (tmp_path / "killed").mkdir()
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("kill_in_save_best.py")), str(template),
         str(tmp_path / "new.safetensors"), str(tmp_path / "killed")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    points = json.loads(done.stdout)["kill_points"]
    assert points >= 6  # a directory, three files and their directory synced, the swap into place
    for k in range(1, points + 2):
        run_dir = tmp_path / "killed" / str(k)
        for when in ("killed", "cleared"):
            loaded = checkpoint.load(run_dir / "best")  # verifies sizes and hashes
            held = [w for w in (old, new) if all(np.array_equal(loaded.weights[n], w[n]) for n in w)]
            assert len(held) == 1, f"kill point {k} ({when}): best/ holds neither the old nor the new weights"
            assert loaded.state["val_loss"] == (2.0 if held[0] is old else 1.5)
            checkpoint.remove_stale_temps(run_dir)
        assert sorted(p.name for p in run_dir.iterdir()) == [ownership.MARKER, "best"]
    # The call that was not killed put the new weights in place.
    assert np.array_equal(checkpoint.load(tmp_path / "killed" / str(points + 1) / "best").weights["model.norm.weight"],
                          new["model.norm.weight"])
