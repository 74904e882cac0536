"""A torchrun worker that fails on purpose: rank 1 raises at its 6th training step.

The test runs it under torchrun in place of `python -m localtrain`, to show that one
rank's error brings the whole job down with that error shown.
"""

import os
import sys

from localtrain.backends.torch_backend import TorchBackend
from localtrain.cli import main

if os.environ.get("RANK") == "1":
    original = TorchBackend.train_step
    calls = {"n": 0}

    def failing(self, micro_batches, lr):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("injected failure on rank 1 at step 6")
        return original(self, micro_batches, lr)

    TorchBackend.train_step = failing

sys.exit(main())
