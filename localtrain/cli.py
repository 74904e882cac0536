"""The `localtrain` command line.

`run` and `config` live here. Every other command lives in a module of its own that
provides `add_arguments(parser)` and `main(args) -> int`, listed in COMMANDS; the
command appears once its module exists. With no command, `localtrain` opens the
dashboard (`localtrain.tui.app`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from localtrain import __version__
from localtrain.errors import LocaltrainError


def add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="preset name (see `localtrain config --presets`) or a TOML file")
    p.add_argument("--data", metavar="PATH", help="train on this file or directory (sets data.source)")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps to train (train.max_steps)")
    p.add_argument("--max-time", type=float, metavar="MIN", help="stop after this many minutes (train.max_time)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="where to train (run.device)")
    p.add_argument("--backend", choices=["torch", "mlx"], help="training framework (run.backend)")
    p.add_argument("--seed", type=int, help="seed for init, data order and samples (train.seed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=3e-4 (repeatable)")


def overrides_from(args: argparse.Namespace) -> list[str]:
    out = []
    if args.data is not None:
        path = Path(args.data).expanduser()
        # Paths are stored absolute so the run resumes from any working directory.
        out.append(f"data.source={path.resolve() if path.exists() else args.data}")
    for flag, key in (("max_steps", "train.max_steps"), ("max_time", "train.max_time"),
                      ("device", "run.device"), ("backend", "run.backend"), ("seed", "train.seed")):
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={value}")
    return out + list(args.overrides)


COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("localtrain.doctor", "what this machine can train: checks and a capacity table per preset"),
    "prepare": ("localtrain.data.command", "prepare a corpus into token shards (resumable)"),
    "eval": ("localtrain.evaluate", "loss, perplexity and bits per byte of a checkpoint on a text"),
    "sample": ("localtrain.sample", "generate text from a run's checkpoint or an export"),
    "export": ("localtrain.export", "export a run as a Hugging Face Llama directory"),
}
TUI_MODULE = "localtrain.tui.app"


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="localtrain",
        description="Train a language model from scratch on this machine.",
    )
    ap.add_argument("--version", action="version", version=f"localtrain {__version__}")
    ap.add_argument("--runs-dir", default="runs", metavar="DIR",
                    help="where the dashboard looks for runs (default: runs, where `localtrain run` writes)")
    sub = ap.add_subparsers(dest="command")

    run = sub.add_parser("run", help="train headless (the default preset trains on this Python's stdlib)")
    add_config_flags(run)
    run.add_argument("--run-dir", metavar="DIR", help="run directory (default runs/<preset>-<date-time>)")
    run.add_argument("--resume", nargs="?", const=True, default=False, metavar="auto|PATH",
                     help="continue the latest run (or --run-dir, or PATH) from its newest complete"
                     " checkpoint; `auto` starts fresh when there is none")
    run.add_argument("--plain", action="store_true", help="plain log lines even on a terminal")

    conf = sub.add_parser("config", help="show the resolved configuration, the keys or the presets")
    add_config_flags(conf)
    conf.add_argument("--keys", action="store_true", help="list every key with its help")
    conf.add_argument("--presets", action="store_true", help="list the presets")

    for name, (module, help_text) in COMMANDS.items():
        if _available(module):
            p = sub.add_parser(name, help=help_text, description=help_text)
            importlib.import_module(module).add_arguments(p)
    return ap


def cmd_run(args: argparse.Namespace) -> int:
    from localtrain import runner
    from localtrain.console import ConsoleView

    request = runner.RunRequest(
        preset=args.preset, overrides=overrides_from(args), run_dir=args.run_dir, resume=args.resume,
    )
    setup = runner.setup(request)
    view = ConsoleView(log_every=setup.config.train.log_every, live=False if args.plain else None)
    try:
        done = runner.execute(setup, console=view)
    except KeyboardInterrupt:
        view.close()
        print(
            f"\nAborted without a final checkpoint. The newest complete checkpoint in {setup.run_dir}"
            f" is kept; continue with: localtrain run --resume --run-dir {setup.run_dir}",
            file=sys.stderr,
        )
        return 130
    finally:
        view.close()
    if done.reason in ("interrupted", "max_time"):
        print(f"Stopped at step {done.step}. Continue with: localtrain run --resume --run-dir {setup.run_dir}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from localtrain import config as cfg

    if args.presets:
        for name in cfg.preset_names():
            lines = (cfg.presets_dir() / f"{name}.toml").read_text().splitlines()
            intro = " ".join(x.lstrip("# ") for x in lines if x.startswith("#"))
            print(f"{name:18} {intro.split('. ')[0].rstrip('.')}.")
        return 0
    if args.keys:
        for section, cls in cfg.SECTIONS.items():
            for name, doc in cfg.field_docs(cls).items():
                print(f"{section}.{name:24} {doc}")
        return 0
    config = cfg.resolve(args.preset or "python-stdlib", overrides_from(args))
    print(cfg.to_toml(config), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    try:
        if args.command is None:
            if _available(TUI_MODULE):
                return importlib.import_module(TUI_MODULE).main(args)
            ap.print_help()
            return 0
        if args.command == "run":
            return cmd_run(args)
        if args.command == "config":
            return cmd_config(args)
        return importlib.import_module(COMMANDS[args.command][0]).main(args)
    except LocaltrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
