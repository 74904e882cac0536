"""The run dashboard: one run drawn from its events.jsonl, live or finished.

The events file is read in bounded chunks in a worker thread (`asyncio.to_thread`), so
the event loop only folds already-decoded events and redraws; a run training at full
speed, or a file of millions of lines, never stalls the keys. Pause, sample, checkpoint
and stop go through the run's control file, as for any controller.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Static

from localtrain import control
from localtrain.console import duration, human, plan_batch, plan_choices, size
from localtrain.runfiles import EVENTS_FILE, PLAN_FILE

from localtrain.tui.dialogs import QuitDialog
from localtrain.tui.launch import console_tail
from localtrain.tui.runs import EventTail, RunState, describe_status, lock_pid, pid_alive, run_status
from localtrain.tui.widgets import Curves, MemoryBar, Meter, stamp
from localtrain.tui import messages as msg

PREPARE_STAGES = ("read", "tokenizer", "encode", "done")
LIVE = ("running", "paused", "waiting", "stopping", "starting")
MAX_CHUNKS_PER_POLL = 64
PLOT_EVERY_S = 1.0


def clock(t: float | None) -> str:
    """The local time of an event (never the time now)."""
    return "--:--:--" if t is None else dt.datetime.fromtimestamp(t).strftime("%H:%M:%S")


class RunScreen(msg.HostedScreen):
    """A run's dashboard: progress, speed, memory, curves, samples, checkpoints, messages."""

    BINDINGS = [
        Binding("p", "pause", "Pause/continue"),
        Binding("s", "sample", "Sample now"),
        Binding("c", "checkpoint", "Checkpoint now"),
        Binding("q", "quit_run", "Quit"),
        Binding("escape", "back", "Runs"),
    ]

    def __init__(self, run_dir: Path, process: subprocess.Popen | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.process = process
        self.tail = EventTail(run_dir / EVENTS_FILE)
        self.state = RunState(run_dir)
        self.status = "starting" if process is not None else "empty"
        self.alive = process is not None
        self.caught_up = asyncio.Event()
        """Set once a read found nothing more to read (tests and screenshots wait on it)."""
        self._reading = False
        self._memory_terms: dict[str, int] | None = None
        self._noted: set[str] = set()
        self._plots_stale = True
        self._plotted_at = -PLOT_EVERY_S

    # -- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="run-title")
        with Horizontal(id="top"):
            # Scrolls rather than cutting a long message off on a small terminal.
            with VerticalScroll(id="data-panel", classes="panel"):
                yield Static("Data", classes="panel-title")
                yield Meter("download", id="download")
                yield Meter("prepare ", id="prepare")
            with Vertical(id="train-panel", classes="panel"):
                yield Static("Training", classes="panel-title")
                yield Meter("steps", id="progress")
                yield Static(id="speed")
                yield MemoryBar(id="memory")
        with Horizontal(id="plots"):
            yield Curves("loss", "loss", id="loss-plot")
            yield Curves("validation perplexity", "ppl", id="ppl-plot")
        with Horizontal(id="bottom"):
            with VerticalScroll(id="samples-panel", classes="panel"):
                yield Static(id="samples")
            with VerticalScroll(id="checkpoints-panel", classes="panel"):
                yield Static(id="checkpoints")
            with VerticalScroll(id="messages-panel", classes="panel"):
                yield Static(id="messages")
        yield Footer()

    def on_mount(self) -> None:
        for panel, title in (("samples", "Live samples"), ("checkpoints", "Checkpoints"), ("messages", "Warnings and errors")):
            self.query_one(f"#{panel}-panel").border_title = title
        self.redraw()
        self.set_interval(self.host.poll_interval, self.poll)
        self.call_later(self.poll)

    # -- reading ----------------------------------------------------------------------------

    def _check_alive(self) -> bool:
        return (self.process is not None and self.process.poll() is None) or pid_alive(lock_pid(self.run_dir))

    async def poll(self) -> None:
        """Read what was appended since the last poll, a bounded chunk at a time, off the loop."""
        if self._reading:
            return
        self._reading = True
        try:
            before = (self.state.events_read, self.state.bad_lines, len(self.state.messages), self.status)
            for _ in range(MAX_CHUNKS_PER_POLL):
                chunk = await asyncio.to_thread(self.tail.read)
                self.state.fold(chunk)
                if not chunk.more:
                    break
                await asyncio.sleep(0)
            self.alive = await asyncio.to_thread(self._check_alive)
            self.state.truncated_bytes = len(self.tail.pending)
            self._note_ended_states()
            self.status = run_status(self.state, self.alive)
            if self.status in ("empty", "died", "missing") and self.process is not None and self.process.poll():
                self.status = "failed"  # our child exited with an error before its final event
            if before != (self.state.events_read, self.state.bad_lines, len(self.state.messages), self.status):
                self.redraw()
            else:
                self.draw_plots_if_due()
            if not chunk.more:  # else MAX_CHUNKS_PER_POLL chunks were read and more waits
                self.caught_up.set()
        finally:
            self._reading = False

    def _note_once(self, key: str, level: str, text: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            self.state.note(level, self.state.last_time or 0.0, text)

    def _note_ended_states(self) -> None:
        if self.alive:
            return
        if self.state.truncated_bytes:
            self._note_once("truncated", "warning",
                            f"The last line of events.jsonl is incomplete ({self.state.truncated_bytes} bytes,"
                            " no newline): its writer stopped in the middle of it, so it was skipped.")
        code = self.process.poll() if self.process is not None else None
        if code not in (None, 0) and self.state.done is None and self.state.error is None:
            tail = console_tail(self.run_dir)
            self._note_once("exit", "error", f"`localtrain run` exited with status {code}."
                            + (f" It printed:\n{tail}" if tail else ""))
        if self.state.missing:
            self._note_once("missing", "error", f"The run directory {self.run_dir} does not exist (or is gone):"
                            " nothing to show. Check --runs-dir, or start the run again.")

    # -- drawing ----------------------------------------------------------------------------

    def redraw(self) -> None:
        s = self.state
        badge = describe_status(self.status)
        # Two lines, so that neither is cut on a terminal of 140 columns or fewer.
        title = Text.assemble((f" {s.name} ", "bold reverse"), "  ",
                              (f" {self.status} ", f"bold reverse {badge['colour']}"), f"  {badge['meaning']}")
        if s.last_time is not None:
            title.append(f" | last event {stamp(s.last_time)}", style="dim")
        title.append("\n ")
        if (p := s.plan) is not None:
            title.append(f"{plan_choices(p)} | {human(p.params)} params | vocab {p.vocab_size}"
                         f" | {plan_batch(p)} of {p.seq_len} tokens")
        else:
            title.append("no plan yet", style="dim")
        self.query_one("#run-title", Static).update(title)
        self._draw_data()
        self._draw_training()
        self._plots_stale = True
        self._draw_lists()
        self.draw_plots_if_due()

    def draw_plots_if_due(self) -> None:
        """Redraw the curves, at most once a PLOT_EVERY_S while the run is live (they cost
        the most to draw); a finished run's are drawn at once."""
        now = time.monotonic()
        if self._plots_stale and (not self.alive or now - self._plotted_at >= PLOT_EVERY_S):
            self._plots_stale, self._plotted_at = False, now
            self._draw_plots()

    def _draw_data(self) -> None:
        s = self.state
        d = s.download
        download = self.query_one("#download", Meter)
        # A local source downloads nothing: its bar is shown only once a download reports.
        download.display = d is not None
        if d is not None:
            frac = d.bytes / d.total if d.total else None
            total = f" of {size(d.total)}" if d.total else ""
            download.set(frac, f"{size(d.bytes)}{total} | {size(d.bytes_per_s)}/s | ETA {duration(d.eta_s)}\n{d.url}")
        prep = self.query_one("#prepare", Meter)
        p = s.prepare
        if p is None:
            prep.set(None, "waiting")
            return
        done = [st for st in PREPARE_STAGES if st in s.prepare_stages]
        frac = 1.0 if "done" in s.prepare_stages else len(done) / len(PREPARE_STAGES)
        docs = max((e.documents for e in s.prepare_stages.values()), default=0)
        tokens = max((e.tokens for e in s.prepare_stages.values()), default=0)
        secs = sum(e.seconds for e in s.prepare_stages.values())
        rate = f" ({human(docs / secs)}/s)" if secs > 0 and docs else ""
        cached = " | cached" if p.cached else ""
        prep.set(frac, f"{p.stage}: {human(docs)} documents{rate} | {human(tokens)} tokens{cached}\n{p.message}")

    def _draw_training(self) -> None:
        s = self.state
        st, plan = s.step, s.plan
        progress = self.query_one("#progress", Meter)
        speed = self.query_one("#speed", Static)
        if st is None:
            total = plan.total_steps if plan else None
            progress.set(0.0 if total else None, f"step 0 of {total}" if total else "waiting for the plan")
            speed.update(Text("no steps yet", style="dim"))
        else:
            colour = {"paused": "yellow", "waiting": "yellow", "failed": "red", "died": "red"}.get(self.status, "green")
            progress.set(st.step / st.total_steps if st.total_steps else None,
                         f"step {st.step:,} of {st.total_steps:,} | {human(st.tokens)} tokens |"
                         f" elapsed {duration(st.elapsed_s)}" + (f" | ETA {duration(st.eta_s)}" if self.alive else ""),
                         colour)
            ev_ = s.evals[max(s.evals)] if s.evals else None
            val = (f" | val loss {ev_.val_loss:.4f} ppl {ev_.val_ppl:,.2f} bpb {ev_.val_bpb:.3f}"
                   if ev_ is not None else "")
            speed.update(Text.assemble(
                ("loss ", "bold"), f"{st.loss:.4f}" if st.loss is not None else "nan", val, "\n",
                ("speed ", "bold"), f"{human(st.tokens_per_s)} tokens/s | MFU {st.mfu:.1%} |"
                f" {st.step_time_s * 1000:,.0f} ms/step", "\n",
                ("lr ", "bold"), f"{st.lr:.3g} | grad norm {st.grad_norm:.3g}",
            ))
        if plan is not None:
            terms = self._plan_terms(plan.predicted_peak_bytes)
            used = st.memory_bytes if st is not None else None
            self.query_one("#memory", MemoryBar).set(terms, plan.budget_bytes, used)

    def _plan_terms(self, predicted: int) -> dict[str, int]:
        if self._memory_terms is None:
            try:
                terms = json.loads((self.run_dir / PLAN_FILE).read_text()).get("memory") or {}
                self._memory_terms = {k: int(v) for k, v in terms.items()}
            except (OSError, ValueError, AttributeError):
                self._memory_terms = {}
        return self._memory_terms or {"predicted peak": predicted}

    def _draw_plots(self) -> None:
        s = self.state
        self.query_one("#loss-plot", Curves).set({"train": s.loss_points(), "val": s.val_points("val_loss")})
        self.query_one("#ppl-plot", Curves).set({"val ppl": s.val_points("val_ppl")})

    def _draw_lists(self) -> None:
        s = self.state
        samples = Text()
        for sample in reversed(s.samples[-6:]):
            samples.append(f"step {sample.step} ", style="bold")
            if sample.manual:
                samples.append(f"(asked for, seed {sample.seed}) ", style="magenta")
            samples.append(repr(sample.prompt), style="cyan")
            samples.append("\n" + sample.text.replace("\t", "    ").strip("\n") + "\n\n")
        self.query_one("#samples", Static).update(samples or Text("no samples yet", style="dim"))
        ckpts = Text()
        for c in reversed(s.checkpoints[-20:]):
            ckpts.append(f"{c.step:>7,} ", style="bold")
            ckpts.append(f"{c.reason:9} {size(c.bytes):>7} {clock(c.time)}\n")
        if s.done is not None:
            best = f", best val loss {s.done.best_val_loss:.4f}" if s.done.best_val_loss is not None else ""
            ckpts.append(f"done ({s.done.reason}) at step {s.done.step:,}{best}\n", style="bold")
        self.query_one("#checkpoints", Static).update(ckpts or Text("none yet", style="dim"))
        msgs = Text()
        for level, when, text in reversed(s.messages[-40:]):
            msgs.append(f"{clock(when)} {level} ", style="bold red" if level == "error" else "bold yellow")
            msgs.append(text + "\n")
        self.query_one("#messages", Static).update(msgs or Text("none", style="dim"))

    # -- keys ---------------------------------------------------------------------------------

    def _send(self, command: str, note: str) -> None:
        """Send `command` through the run's control file and say `note`, or say why nothing can take it."""
        if not self.alive:
            self.notify(f"The run is {self.status}: there is no process to control.", severity="warning")
        elif self.state.status is None:
            self.notify("The run takes commands once training has started (after the data is prepared).",
                        severity="warning")
        else:
            control.send(self.run_dir, command)
            self.notify(note)

    def action_pause(self) -> None:
        if self.status == "paused":
            self._send("resume", "Continuing...")
        else:
            self._send("pause", "Pausing after this step...")

    def action_sample(self) -> None:
        self._send("sample", "Sampling now...")

    def action_checkpoint(self) -> None:
        self._send("checkpoint", "Writing a checkpoint at the next step...")

    def action_back(self) -> None:
        self.post_message(msg.GoHome())

    def action_quit_run(self) -> None:
        if not (self.alive and self.status in LIVE):
            self.app.exit()
            return

        def chosen(answer: str | None) -> None:
            if answer == "stop":
                pid = self.process.pid if self.process is not None else lock_pid(self.run_dir)
                if self.state.status is None and pid is not None:
                    # Not yet training, so not yet reading its control file; nothing to checkpoint.
                    os.kill(pid, signal.SIGTERM)
                else:
                    control.send(self.run_dir, "stop")
                self.app.exit(message=f"Stopping {self.run_dir}: it writes a checkpoint and exits."
                              f" Continue it later with: localtrain run --resume --run-dir {self.run_dir}")
            elif answer == "leave":
                self.app.exit(message=f"{self.run_dir} goes on training in the background. Open `localtrain`"
                              " again to watch it.")

        self.app.push_screen(QuitDialog(self.run_dir.name), chosen)
