"""`python -m localtrain` that stops in the middle of one checkpoint write, to be killed there.

With PAUSE_AT_STEP=N and PAUSE_MARKER=PATH in the environment, writing the checkpoint of step
N stops once its first file is written and synced: PATH is created, then the process waits
to be killed. Every other write is the real one.
"""

import os
import sys
import time
from pathlib import Path

from localtrain import checkpoint
from localtrain.cli import main

step_dir = checkpoint.step_dir_name(int(os.environ["PAUSE_AT_STEP"]))
write = checkpoint.write_synced


def write_then_pause(path: Path, data: bytes) -> None:
    write(path, data)
    if step_dir in path.parent.name:  # its temporary directory, or wherever it is written
        # Renamed into place whole: the test reads it as soon as it exists.
        marker = Path(os.environ["PAUSE_MARKER"])
        marker.with_name(marker.name + ".tmp").write_text(str(path))
        os.replace(marker.with_name(marker.name + ".tmp"), marker)
        time.sleep(3600)


checkpoint.write_synced = write_then_pause
sys.exit(main())
