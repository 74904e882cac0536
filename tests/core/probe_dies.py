"""A measuring process that dies on the candidates the test names: a stand-in for a probe
killed by the kernel's OOM killer or a crash inside a framework. Others it measures for real."""

from __future__ import annotations

import json
import os
import signal
import sys

from localtrain.backends import probe

if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    dying = json.loads(os.environ["PROBE_DIES_ON"])  # [[dtype, compile, micro], ...]
    for line in sys.stdin:
        cand = json.loads(line)
        best = cand.pop("best_step_s", None)
        if [cand["dtype"], cand["compile"], cand["micro_batch_size"]] in dying:
            os.kill(os.getpid(), signal.SIGKILL)
        print(json.dumps(probe.measure({**spec, "best_step_s": best}, cand)), flush=True)
