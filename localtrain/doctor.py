"""`localtrain doctor`: checks of this machine, then what each preset would do on it.

One row per check (ok / warn / fail / skip), then a capacity table with one row per
preset: whether it fits, how many devices it needs (one, or FSDP over several), the
backend, dtype, micro-batch x accumulation, the predicted peak against the memory
budget, tokens/s, the time to the token budget and the disk needed; then the corpora
prepared in the cache, with the characters and bytes of text per token their vocabulary
gives. Exit status 0 when nothing fails, 1 when a check fails (with --strict, also when
one warns).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from localtrain import config as cfg
from localtrain.errors import LocaltrainError
from localtrain.hardware import Machine, probe
from localtrain.memory import GB, SAFETY_MARGIN, memory_estimate
from localtrain.plan import RunPlan
from localtrain.planner import estimate_vocab, plan

REQUIRED = ("torch", "sentencepiece", "safetensors", "numpy")
STATUS_COLOURS = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


@dataclass
class Check:
    name: str
    status: str  # ok, warn, fail, skip
    detail: str


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="show only this preset (a name or a TOML file)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for the plans, e.g. --set train.micro_batch_size=4")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--probe", action="store_true",
                   help="time each preset's candidates (dtype, compile, micro-batch) in short real runs and plan"
                   " with the fastest (slow on big presets; the measurements are cached)")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")


def run_checks(machine: Machine, runs_dir: Path) -> list[Check]:
    out = [Check("python", "ok" if sys.version_info >= (3, 10) else "fail", machine.python)]
    out += [Check(lib, "ok", machine.backends[lib]) if lib in machine.backends
            else Check(lib, "fail", f"does not import: {machine.missing.get(lib, '?')}. Reinstall localtrain.")
            for lib in REQUIRED]
    out.append(Check("textual", "ok" if "textual" in machine.backends else "warn",
                     machine.backends.get("textual", "not installed: the dashboard will not open")))
    if "mlx" in machine.backends:
        where = "Metal" if machine.apple_silicon else "CPU build; torch is faster here and is the default"
        out.append(Check("mlx", "ok", f"{machine.backends['mlx']} ({where})"))
    elif machine.apple_silicon:
        out.append(Check("mlx", "warn", "not installed: `pip install localtrain[mlx]` is the fastest backend here"))
    else:
        out.append(Check("mlx", "skip", "not installed (only needed on Apple silicon)"))
    out += [Check(f"cuda:{g.index}", "ok", f"{g.name}, {g.free_bytes / GB:.1f} of {g.total_bytes / GB:.1f}"
                  f" GiB free, compute {g.compute_capability}, bf16 {'yes' if g.bf16 else 'no'}") for g in machine.gpus]
    if not machine.gpus:
        build = machine.backends.get("torch.cuda")
        out.append(Check("cuda", "skip", "no NVIDIA GPU visible" + (f" (torch built for CUDA {build})" if build else "")))
    if machine.apple_silicon:
        out.append(Check("mps", "ok" if machine.mps_available else "warn",
                         f"recommended max {machine.mps_recommended_max_bytes / GB:.1f} GiB"
                         if machine.mps_available else "torch sees no MPS device"))
    out.append(Check("cpu", "ok", f"{machine.cpu_model}, {machine.physical_cores} cores, native bf16"
                     f" {'yes' if machine.cpu_native_bf16 else 'no (fp32 is used on the CPU)'}"))
    avail = machine.ram_available_bytes / GB
    status = "fail" if avail < 1 else "warn" if avail < 4 else "ok"
    out.append(Check("memory", status, f"{avail:.1f} GiB available of {machine.ram_total_bytes / GB:.1f} GiB"))
    for name, disk in machine.disk.items():
        free = disk["free"] / GB
        status = "fail" if free < 1 else "warn" if free < 10 else "ok"
        where = runs_dir if name == "runs" else "the data cache"
        out.append(Check(f"disk ({name})", status, f"{free:.1f} GiB free for {where}"))
    return out


def examine(runs_dir: Path, cache_dir: Path, names: list[str], overrides: list[str],
            probe_run: bool) -> tuple[Machine, list[Check], list[dict[str, Any]]]:
    """The machine, its checks and a plan per preset: what `localtrain doctor` and the dashboard's
    machine screen show."""
    machine = probe(runs_dir, cache_dir)
    return machine, run_checks(machine, runs_dir), capacity(machine, names, overrides, probe_run, cache_dir)


def known_vocab(config: cfg.Config) -> int:
    """The vocabulary of the preset's prepared data when it is in the cache, else the planner's estimate."""
    from localtrain.data.prepare import prepared_dir
    from localtrain.data.shards import read_manifest

    try:
        manifest = read_manifest(prepared_dir(config.data))
    except (LocaltrainError, OSError, ValueError):
        manifest = None
    vocab = manifest.get("vocab_size") if isinstance(manifest, dict) else None
    return vocab if isinstance(vocab, int) and vocab > 0 else estimate_vocab(config)


def devices_needed(config: cfg.Config, p: RunPlan, most: int = 256) -> int | None:
    """Devices with this plan's budget each that the preset needs: 1 when one process fits,
    else the fewest FSDP shards over which one sequence per micro-batch with activation
    checkpointing fits (None: not even over `most`)."""
    usable = int(p.budget_bytes * (1 - SAFETY_MARGIN))
    for n in range(1, most + 1):
        est = memory_estimate(config.model, p.vocab_size, 1, p.dtype, p.device, True, p.device != "mps",
                              parallel="fsdp" if n > 1 else "none", world_size=n)
        if est.total <= usable:
            return n
    return None


def capacity(machine: Machine, names: list[str], overrides: list[str], probe_run: bool,
             cache_dir: Path) -> list[dict[str, Any]]:
    """A plan per preset: measured (or cached from an earlier run or probe) where it can be, else
    the defaults with no speed figure."""
    from localtrain import tuner
    from localtrain.console import ConsoleView

    progress = ConsoleView(sys.stderr, live=False)  # the tuner's plain lines, apart from the report
    rows = []
    for name in names:
        try:
            config = cfg.resolve(name, overrides)
            vocab = known_vocab(config)
            tuned = tuner.cached(config, machine, vocab, cache_dir)
            if tuned is None and probe_run and plan(config, machine, vocab).fits:
                tuned = tuner.tune(config, machine, vocab, cache_dir, progress)
            p = plan(config, machine, vocab, tuned=tuned)
            # Devices here with a budget of their own: the GPUs (CPU processes share the RAM).
            rows.append({"preset": name, "plan": p.to_dict(), "devices_needed": devices_needed(config, p),
                         "devices_here": len(machine.gpus) if p.device == "cuda" else 1})
        except LocaltrainError as exc:
            rows.append({"preset": name, "error": str(exc)})
    return rows


def human_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def print_prepared(console: Any, prepared: list[dict[str, Any]], shown: int = 10) -> None:
    """The prepared corpora in the cache with what their vocabulary does to their text."""
    from rich.table import Table

    if not prepared:
        return
    table = Table("source", "tokenizer", "coverage", "documents", "tokens", "chars/token", "bytes/token",
                  title="Prepared data in the cache (what each vocabulary does to its text)", title_justify="left")
    for r in prepared[:shown]:
        chars, nbytes = r["chars_per_token"], r["bytes_per_token"]
        table.add_row(str(r["source"]), f"{r['tokenizer']} {r['vocab_size']}", f"{r['character_coverage']}",
                      f"{r['documents']:,}", f"{r['tokens']:,}", "?" if chars is None else f"{chars:.2f}",
                      "?" if nbytes is None else f"{nbytes:.2f}")
    console.print(table)


def print_report(machine: Machine, checks: list[Check], rows: list[dict[str, Any]],
                 prepared: list[dict[str, Any]] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 132)
    console.print(f"[bold]localtrain doctor[/]: {machine.cpu_model}, {machine.physical_cores} cores,"
                  f" {machine.ram_total_bytes / GB:.1f} GiB RAM, {machine.os}")
    table = Table("check", "status", "detail", box=None)
    for c in checks:
        table.add_row(c.name, f"[{STATUS_COLOURS[c.status]}]{c.status}[/]", c.detail)
    console.print(table)
    cap = Table("preset", "fits", "devices", "backend", "dtype", "micro x accum", "peak / budget", "tokens/s",
                "time to budget", "disk", title="Capacity: a plan per preset (speed and peak measured by"
                " --probe or an earlier run on this machine; otherwise the peak is predicted)", title_justify="left")
    for row in rows:
        if "error" in row:
            cap.add_row(row["preset"], "[red]no[/]", *[""] * 8, end_section=False)
            console.print(f"[red]{row['preset']}[/]: {row['error']}")
            continue
        p = row["plan"]
        disk = (p["disk_needed"]["data"] + p["disk_needed"]["checkpoints"]) / GB
        cap.add_row(
            row["preset"], "[green]yes[/]" if p["fits"] else "[red]no[/]", describe_devices(row),
            f"{p['backend']}/{p['device']}", p["dtype"] + (" compiled" if p["compile"] else ""), f"{p['micro_batch_size']} x {p['grad_accum_steps']}"
            + (" (ckpt)" if p["activation_checkpointing"] else ""),
            f"{p['predicted_peak_bytes'] / GB:.2f} / {p['budget_bytes'] / GB:.1f} GiB"
            + (" (measured)" if p["candidates"] else ""),
            f"{p['predicted_tokens_per_s']:,.0f}" if p["predicted_tokens_per_s"] else "not measured",
            human_time(p["predicted_seconds"]), f"{disk:.1f} GiB",
        )
    console.print(cap)
    if len(rows) == 1 and "plan" in rows[0]:
        p = rows[0]["plan"]
        terms = Table("memory term", "bytes", title=f"Predicted peak of {rows[0]['preset']} by term, at micro-batch"
                      f" {p['micro_batch_size']}", title_justify="left", box=None)
        for name, value in p["memory"].items():
            terms.add_row(name, f"{value / GB:.3f} GiB")
        terms.add_row("total", f"{sum(p['memory'].values()) / GB:.3f} GiB")
        console.print(terms)
        if p["candidates"]:
            found = Table("candidate", "status", "tokens/s", "peak", "warm-up", f"{p['total_steps']} steps",
                          title="Measured on this machine (the least predicted wall time wins; within 3%, less"
                          " memory)", title_justify="left", box=None)
            for c in p["candidates"]:
                label = f"{c['dtype']} {'compiled' if c['compile'] else 'eager'}, micro {c['micro_batch_size']}"
                speed = p["tokens_per_step"] / p["world_size"] / c["step_s"] if c["step_s"] else 0
                peak = c["whole_peak_bytes"] or c["peak_bytes"]  # the whole process's; as measured where it failed
                wall = human_time(c["predicted_wall_s"]) if c["predicted_wall_s"] is not None else "-"
                found.add_row(label + (" [green](chosen)[/]" if c["chosen"] else ""), c["status"],
                              f"{speed:,.0f}" if speed else "-", f"{peak / GB:.2f} GiB",
                              f"{c['warmup_s']:.1f} s", wall)
            console.print(found)
        console.print(f"decided by: {p['decided_by']} ({p['why']})")
        for note in p["notes"]:
            console.print(f"note: {note}")
    print_prepared(console, prepared or [])


def describe_devices(row: dict[str, Any]) -> str:
    """"1", or "FSDP x N" coloured by whether this machine has N devices, or "none" when no count fits."""
    needed, here = row["devices_needed"], row["devices_here"]
    if needed is None:
        return "[red]none[/]"
    if needed == 1:
        return "1"
    return f"[{'green' if needed <= here else 'red'}]FSDP x {needed}[/]" + ("" if needed <= here else f" (has {here})")


def main(args: argparse.Namespace) -> int:
    from localtrain.data.paths import cache_root
    from localtrain.data.prepared import cached_summaries

    runs_dir = Path(getattr(args, "runs_dir", "runs"))
    cache_dir = cache_root(cfg.DataConfig())
    names = [args.preset] if args.preset else cfg.preset_names()
    machine, checks, rows = examine(runs_dir, cache_dir, names, args.overrides, args.probe)
    prepared = cached_summaries(cache_dir)
    if args.json:
        print(json.dumps({"machine": machine.to_dict(), "checks": [asdict(c) for c in checks],
                          "capacity": rows, "prepared": prepared}, indent=1, default=str))
    else:
        print_report(machine, checks, rows, prepared)
    failed = any(c.status == "fail" for c in checks) or any("error" in r for r in rows)
    warned = any(c.status == "warn" for c in checks)
    return 1 if failed or (args.strict and warned) else 0
