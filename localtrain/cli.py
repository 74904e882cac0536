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
import os
import sys
from pathlib import Path
from typing import NoReturn

from localtrain import __version__
from localtrain.errors import LocaltrainError, PeerFailed
from localtrain.flags import add_config_flags, overrides_from


# torchrun's own multi-node flags, passed through as they are.
TORCHRUN_FLAGS = {
    "--nnodes": "number of nodes (or MIN:MAX)",
    "--node-rank": "this node's rank",
    "--rdzv-endpoint": "HOST:PORT where the nodes meet",
    "--rdzv-id": "a job id shared by the nodes",
    "--rdzv-backend": "rendezvous backend (default c10d)",
}

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
    run.add_argument("--run-dir", metavar="DIR", help="run directory (default runs/<data or preset>-<date-time>)")
    run.add_argument("--resume", nargs="?", const=True, default=False, metavar="auto|PATH",
                     help="continue the latest run (or --run-dir, or PATH) from its newest complete"
                     " checkpoint; `auto` starts fresh when there is none")
    run.add_argument("--plain", action="store_true", help="plain log lines even on a terminal")
    par = run.add_argument_group("data parallel (torchrun)")
    par.add_argument("--nproc", type=int, metavar="N", help="train on N processes of this machine under torchrun"
                     " (one per GPU, or CPU processes sharing the cores); run.parallel picks DDP or FSDP")
    for flag, text in TORCHRUN_FLAGS.items():
        par.add_argument(flag, metavar="VALUE", help=f"passed to torchrun: {text}")

    conf = sub.add_parser("config", help="show the resolved configuration, the keys or the presets")
    add_config_flags(conf)
    conf.add_argument("--keys", action="store_true", help="list every key with its help")
    conf.add_argument("--presets", action="store_true", help="list the presets")

    for name, (module, help_text) in COMMANDS.items():
        if _available(module):
            p = sub.add_parser(name, help=help_text, description=help_text)
            importlib.import_module(module).add_arguments(p)
    return ap


def worker_argv(argv: list[str], run_dir: Path) -> list[str]:
    """The launcher's arguments for the workers: without --nproc and torchrun's flags, and
    with the run directory the launcher resolved (a default one is named by the clock)."""
    drop = {"--nproc", *TORCHRUN_FLAGS}
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in drop:
            skip = True
        elif a.split("=", 1)[0] not in drop:
            out.append(a)
    if not any(a == "--run-dir" or a.startswith("--run-dir=") for a in out):
        out += ["--run-dir", str(run_dir)]
    return out


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    from localtrain import runner
    from localtrain.console import ConsoleView

    worker = "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ  # a rank that torchrun started
    if worker:
        world = int(os.environ["WORLD_SIZE"])
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    else:
        world = local_world = args.nproc or 1
    request = runner.RunRequest(
        preset=args.preset, overrides=overrides_from(args), run_dir=args.run_dir, resume=args.resume,
        world_size=world, local_world_size=local_world,
    )
    setup = runner.setup(request)
    if worker:
        leave(run_worker(setup))
    for note in setup.notes:  # the launcher says it once, not every worker
        print(note)
    if args.nproc:
        from localtrain.backends.torch_dist import launch

        values = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in TORCHRUN_FLAGS}
        passthrough = [f"{flag}={value}" for flag, value in values.items() if value is not None]
        launch(args.nproc, passthrough, worker_argv(argv, setup.run_dir))  # replaces this process
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


def run_worker(setup) -> int:
    """One rank of a torchrun job: join the group, agree on the run directory, train."""
    import dataclasses

    from localtrain import runner
    from localtrain.backends.torch_dist import init, recorded
    from localtrain.console import ConsoleView

    dist = init(setup.plan.device)
    try:
        chosen = Path(dist.broadcast_text(str(setup.run_dir)))
        if chosen != setup.run_dir:
            run = dataclasses.replace(setup.config.run, run_dir=str(chosen))
            setup = dataclasses.replace(setup, run_dir=chosen, config=dataclasses.replace(setup.config, run=run))
        view = ConsoleView(log_every=setup.config.train.log_every, live=False) if dist.is_main else None
        try:
            done = recorded(runner.execute)(setup, console=view, dist=dist)
        except LocaltrainError as exc:
            if not isinstance(exc, PeerFailed):  # that one's own process printed the error
                print(f"[rank {dist.rank}] error: {exc}", file=sys.stderr)
            return exc.exit_code
        # Every rank leaves the group together: one tearing it down while another is still
        # on its way out can abort that one.
        dist.barrier()
        if dist.is_main and done.reason in ("interrupted", "max_time"):
            print(f"Stopped at step {done.step}. Continue with: localtrain run --resume --run-dir {setup.run_dir}"
                  " (with --nproc N for N processes)")
        return 0
    finally:
        dist.close()


def leave(code: int) -> NoReturn:
    """End a torchrun rank whose run ended (its files written, its group torn down) without the
    interpreter's shutdown: a gloo worker thread can still hold a finished collective's tensors,
    and freeing them while the interpreter finalizes aborts the process ("terminate called
    without an active exception", 2 of 55 two-rank FSDP runs on a CPU) after a run that succeeded."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def preset_rows() -> list[tuple[str, str]]:
    """(name, first sentence of its header comment) for every preset, as `config --presets`
    and the dashboard list them."""
    from localtrain import config as cfg

    rows = []
    for name in cfg.preset_names():
        lines = (cfg.presets_dir() / f"{name}.toml").read_text().splitlines()
        intro = " ".join(x.lstrip("# ") for x in lines if x.startswith("#"))
        rows.append((name, intro.split(". ")[0].rstrip(".") + "."))
    return rows


def cmd_config(args: argparse.Namespace) -> int:
    from localtrain import config as cfg

    if args.presets:
        for name, intro in preset_rows():
            print(f"{name:18} {intro}")
        return 0
    if args.keys:
        for section, cls in cfg.SECTIONS.items():
            for name, doc in cfg.field_docs(cls).items():
                print(f"{section}.{name:24} {doc}")
        return 0
    from localtrain.runner import choose_preset

    overrides = overrides_from(args)
    preset, why = choose_preset(args.preset, overrides)
    config = cfg.resolve(preset, overrides)
    if why:
        print("# " + why)
    print(cfg.to_toml(config), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    try:
        if args.command is None:
            if _available(TUI_MODULE):
                return importlib.import_module(TUI_MODULE).main(args)
            ap.print_help()
            return 0
        if args.command == "run":
            return cmd_run(args, argv)
        if args.command == "config":
            return cmd_config(args)
        return importlib.import_module(COMMANDS[args.command][0]).main(args)
    except LocaltrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a disk failure outside localtrain.files: the same message, no traceback
        from localtrain.files import disk_error

        error = disk_error(exc, exc.filename, "open")
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
