"""Kills `checkpoint.save_best` at each of its file-system calls in turn.

    python kill_in_save_best.py TEMPLATE NEW_WEIGHTS OUT

For k = 1, 2, ... a forked child copies the run directory TEMPLATE to OUT/k, then calls
save_best there with the weights in NEW_WEIGHTS and SIGKILLs itself just before its k-th call
of mkdir, fsync, rename/replace or rmtree, until one call of save_best finishes without
reaching k. Prints the number of kill points as JSON.
"""

import json
import os
import shutil
import signal
import sys
from pathlib import Path

from safetensors.numpy import load_file

from localtrain import checkpoint

CALLS = [(os, "mkdir"), (os, "fsync"), (os, "rename"), (os, "replace"), (shutil, "rmtree")]


def save_and_die_at(run_dir: Path, weights: dict, kill_at: int) -> None:
    count = 0

    def counted(call):
        def wrapper(*args, **kwargs):
            nonlocal count
            count += 1
            if count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return call(*args, **kwargs)
        return wrapper

    for module, name in CALLS:
        setattr(module, name, counted(getattr(module, name)))
    checkpoint.save_best(run_dir, weights, {"val_loss": 1.5})


def main(template: Path, new_weights: Path, out: Path) -> None:
    weights = load_file(str(new_weights))
    k = 0
    while True:
        k += 1
        run_dir = out / str(k)
        shutil.copytree(template, run_dir)
        pid = os.fork()
        if pid == 0:
            save_and_die_at(run_dir, weights, k)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            assert os.WTERMSIG(status) == signal.SIGKILL
            continue
        assert os.WEXITSTATUS(status) == 0, status
        print(json.dumps({"kill_points": k - 1}))
        return


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:4]))
