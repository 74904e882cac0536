"""Data parallelism on PyTorch's own engine: torchrun launches, DDP averages gradients.

`launch` turns `localtrain run --nproc N ...` into the same command under
`torch.distributed.run` (torchrun), replacing the launching process so that a signal to
it reaches the whole job. Inside a worker, `init` joins the process group (gloo on CPU,
NCCL on CUDA) and returns a `TorchDist` that the loop uses to agree between steps.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import sys
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

# A pause from the dashboard holds every rank at the next agreement; the default
# collective timeout would turn a long pause into a crash.
TIMEOUT = datetime.timedelta(hours=24)
T = TypeVar("T")


def launch(nproc: int, torchrun_args: list[str], argv: list[str]) -> None:
    """Replace this process with torchrun (`torchrun` below) running `python -m localtrain <argv>` N times."""
    cmd = [sys.executable, "-m", "localtrain.backends.torch_dist", f"--nproc-per-node={nproc}", "--max-restarts=0",
           "--monitor-interval=0.5", *torchrun_args]
    if not any(a.startswith(("--rdzv", "--master", "--nnodes")) for a in torchrun_args):
        cmd.append("--standalone")
    cmd += ["-m", "localtrain", *argv]
    # torchrun's own default, without its banner saying so: each worker sets its threads itself.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.stdout.flush()
    os.execv(sys.executable, cmd)


def torchrun(args: list[str]) -> int:
    """torchrun's main on `args`. A job whose ranks stopped on an error they reported themselves
    (a LocaltrainError: its paragraph is printed, its exit code 2; the ranks torchrun stopped
    after it, SIGTERM) ends with that exit code and nothing more, rather than torchrun's failure
    report and traceback; any other failure gets torchrun's report as before."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    from localtrain.errors import LocaltrainError

    # Its log lines on stopping the other ranks and on copying a rank's error file: the report
    # below says the same where it is shown.
    for name in ("torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.multiprocessing.errors"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        main(args)
    except ChildFailedError as exc:
        codes = {f.exitcode for f in exc.failures.values()}
        if LocaltrainError.exit_code in codes and codes <= {LocaltrainError.exit_code, -signal.SIGTERM}:
            return LocaltrainError.exit_code
        raise
    return 0


def _die_with_parent() -> None:
    """A worker whose launcher is killed (even with SIGKILL) dies too, instead of training on."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class TorchDist:
    """This worker's place in the job, and the few collectives the loop needs."""

    def __init__(self, device: str) -> None:
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ["LOCAL_RANK"])
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        self.device = device
        if device == "cuda":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=TIMEOUT)
        _die_with_parent()
        if device == "cpu":
            # Share the cores among the workers of this node.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.local_world_size))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _tensor(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64, device="cuda" if self.device == "cuda" else "cpu")

    def all_max(self, values: list[float]) -> list[float]:
        t = self._tensor(values)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def all_mean(self, values: list[float]) -> list[float]:
        t = self._tensor(values)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return (t / self.world_size).tolist()

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_text(self, text: str) -> str:
        """Rank 0's text on every rank (a run directory chosen by the clock, say)."""
        return self.gather_text(text if self.is_main else "")[0]

    def gather_text(self, text: str) -> list[str]:
        """Every rank's text (its RNG state, say), in rank order, on every rank."""
        raw = text.encode()
        length = self._tensor([len(raw)]).long()
        lengths = [torch.zeros_like(length) for _ in range(self.world_size)]
        dist.all_gather(lengths, length)
        size = int(max(x.item() for x in lengths))
        buf = torch.zeros(size, dtype=torch.uint8, device=length.device)
        buf[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
        bufs = [torch.zeros_like(buf) for _ in range(self.world_size)]
        dist.all_gather(bufs, buf)
        return [bytes(b[: int(n.item())].cpu().tolist()).decode() for b, n in zip(bufs, lengths)]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def init(device: str) -> TorchDist:
    return TorchDist(device)


def recorded(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` reporting an uncaught error to torchrun, which then shows it as the job's root cause."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(fn)


if __name__ == "__main__":
    sys.exit(torchrun(sys.argv[1:]))
