"""The names of the files in a run directory, in one place.

Every module that reads or writes a run directory names its files from here, so that the
runner, the trainer, the exporter and the dashboard agree on them.
"""

CONFIG_FILE = "config.toml"
"""The run's resolved configuration (what `--resume` reads back)."""
EVENTS_FILE = "events.jsonl"
"""Every event of the run, one JSON object a line (`localtrain.events`)."""
CONTROL_FILE = "control.jsonl"
"""Commands to the running loop, appended by a controller (`localtrain.control`)."""
CONSOLE_LOG = "console.log"
"""What a run started from the dashboard prints."""
PLAN_FILE = "plan.json"
"""The planner's decisions and predictions for the run."""
LOCK_FILE = ".lock"
"""Holds the pid of the process training in the run directory."""
