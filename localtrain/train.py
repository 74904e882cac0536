"""The training loop: schedule, accumulation, evaluation, samples, checkpoints, stopping.

It imports no framework. It drives a backend through `localtrain.backends.base.Backend`
and reports everything as events; it never prints.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from localtrain import checkpoint, events as ev, metrics, sampling
from localtrain.backends.base import Backend, OutOfMemory, StepResult
from localtrain.config import Config, TrainConfig
from localtrain.data.loader import POLL_SECONDS, Cursor, TrainWindows, eval_windows
from localtrain.errors import LocaltrainError
from localtrain.parallel import Dist, Single
from localtrain.plan import RunPlan
from localtrain.planner import next_smaller_micro


def lr_at(step: int, train: TrainConfig, total_steps: int) -> float:
    """Learning rate for the update that follows `step` completed updates."""
    peak = train.lr
    floor = peak * train.min_lr_ratio
    # 1) linear warmup
    if step < train.warmup_steps:
        return peak * (step + 1) / (train.warmup_steps + 1)
    # 2) past the end of the schedule, stay at the floor
    if step >= total_steps:
        return floor
    # 3) cosine from peak down to the floor
    ratio = (step - train.warmup_steps) / max(1, total_steps - train.warmup_steps)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - floor)


@dataclass
class TrainData:
    """What the loop needs of the prepared corpus and its tokenizer."""

    train_tokens: Any
    """The training tokens: an array, or the `Phases` of a preparation that may still be running."""
    val_tokens: np.ndarray
    token_bytes: np.ndarray
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    eos_id: int
    tokenizer_sha256: str
    vocab_size: int


@dataclass
class StopFlag:
    """Set by a signal handler (or a controller); the loop stops after the current step."""

    requested: bool = False
    reason: str = "interrupted"

    def request(self, reason: str = "interrupted") -> None:
        self.requested, self.reason = True, reason


Control = Callable[[], list[str]]
"""Returns the commands a controller sent since the last call: "pause", "resume",
"sample", "checkpoint" or "stop". The loop calls it between steps."""
@dataclass
class LoopState:
    step: int = 0
    tokens: int = 0
    cursor: Cursor = (0, 0)
    elapsed_s: float = 0.0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    best_metric: float | None = None
    """The best value of train.best_metric so far (best_val_loss is the val loss at that eval)."""
    last_checkpoint_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class TrainingDiverged(LocaltrainError):
    exit_code = 1


Clock = Callable[[], float]
"""Seconds on a monotonic clock (time.perf_counter); tests drive the loop with a clock of their own."""
ETA_WINDOW = 50
"""Training steps whose wall time the ETA averages: the opening steps (compilation, warm caches)
leave it after this many."""
ETA_WORK_KEPT = 3
"""Durations of each kind of periodic work (evaluation, samples, checkpoint) the ETA averages."""


def occurrences(every: int, after: int, last: int, at_end: bool) -> int:
    """How many steps s with after < s <= last hold work done every `every` steps (0: never),
    counting `last` itself when `at_end` (the work that also closes a run)."""
    if after >= last:
        return 0
    regular = last // every - after // every if every else 0
    return regular + (1 if at_end and (not every or last % every) else 0)


class Eta:
    """The seconds a run still needs: one rule for the console, the dashboard and every reader.

    It is the mean wall time of the last ETA_WINDOW training steps times the steps left,
    plus each kind of periodic work (evaluation, live samples, checkpoints) at the mean of
    its latest durations times the times it still comes round. A slow opening leaves the
    figure once it leaves the window, and the work between steps is counted where it falls.
    """

    def __init__(self, train: TrainConfig, total_steps: int) -> None:
        self.train, self.total_steps = train, total_steps
        self.step_s: collections.deque[float] = collections.deque(maxlen=ETA_WINDOW)
        self.opening: float | None = None
        """The first step of this process, which warms up (allocations, compilation): used alone
        only until another step is timed."""
        self.work_s: dict[str, collections.deque[float]] = {}

    def stepped(self, seconds: float) -> None:
        """One training step took `seconds` of wall time (data, forward, backward, update)."""
        if self.opening is None:
            self.opening = seconds
        else:
            self.step_s.append(seconds)

    def worked(self, kind: str, seconds: float) -> None:
        """Periodic work of `kind` (eval, sample, checkpoint) took `seconds`."""
        self.work_s.setdefault(kind, collections.deque(maxlen=ETA_WORK_KEPT)).append(seconds)

    def seconds_left(self, step: int) -> float | None:
        """After `step` steps, before the work due at `step`; None before any step was timed."""
        times = self.step_s or ([self.opening] if self.opening is not None else [])
        if not times:
            return None
        t, last = self.train, self.total_steps
        left = sum(times) / len(times) * max(last - step, 0)
        due = {
            "eval": occurrences(t.eval_every, step - 1, last, at_end=bool(t.eval_every)),
            "sample": occurrences(t.sample_every, step - 1, last, at_end=False),
            "checkpoint": occurrences(t.checkpoint_every, step - 1, last, at_end=True),
        }
        for kind, durations in self.work_s.items():
            left += due.get(kind, 0) * sum(durations) / len(durations)
        return left


class Trainer:
    def __init__(
        self,
        config: Config,
        backend: Backend,
        data: TrainData,
        run_dir: Path,
        emit: ev.Emit,
        plan: RunPlan,
        peak_flops: float,
        stop: StopFlag | None = None,
        control: Control | None = None,
        dist: Dist | None = None,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.config, self.backend, self.data = config, backend, data
        self.run_dir, self.emit, self.peak_flops = run_dir, emit, peak_flops
        self.stop = stop or StopFlag()
        self.control = control
        self.dist: Dist = dist or Single()
        self.clock = clock
        self.checkpoint_requested = False
        self.sample_seed: int | None = None
        """The seed of a sample asked for, until every rank of a sharded run takes it together."""
        self.early_stop = False
        # A sharded backend needs every rank in each forward and state gather: all ranks
        # then evaluate, sample and gather for checkpoints, and rank 0 alone writes.
        self.every_rank = bool(getattr(backend, "sharded", False)) and self.dist.world_size > 1
        t = config.train
        self.plan = plan
        # Each rank trains on its share of every batch: batch_size / world_size sequences.
        self.rank_batch = plan.rank_batch
        # The micro-batch is the plan's until an out-of-memory step backs it off.
        self.micro_batch_size, self.grad_accum_steps = plan.micro_batch_size, plan.grad_accum_steps
        self.total_steps = plan.total_steps
        self.windows = TrainWindows(data.train_tokens, config.model.seq_len, t.seed, config.data.phase_epochs)
        self.val_batches = eval_windows(data.val_tokens, config.model.seq_len, t.eval_batches, self.micro_batch_size)
        self.flops_per_token = plan.flops_per_token
        self.state = LoopState()
        self.eta = Eta(t, self.total_steps)

    # -- state ---------------------------------------------------------------------------

    def restore(self, loaded: checkpoint.Loaded) -> None:
        s = loaded.state
        self.backend.load_state_arrays(loaded.weights, loaded.moments, int(s["optimizer_step"]))
        ranks = s.get("rng_ranks")
        if ranks and len(ranks) == self.dist.world_size:
            self.backend.set_rng_state(ranks[self.dist.rank])
        else:
            # A new world size: every rank continues from rank 0's generators.
            self.backend.set_rng_state(s["rng"])
        self.backend.set_extra_state(s.get("backend", {}).get("extra", {}))
        self.state = LoopState(
            step=int(s["step"]),
            tokens=int(s["tokens"]),
            cursor=(int(s["cursor"][0]), int(s["cursor"][1])),
            elapsed_s=float(s["elapsed_s"]),
            best_val_loss=s.get("best_val_loss"),
            best_step=s.get("best_step"),
            evals_since_best=int(s.get("evals_since_best", 0)),
            last_checkpoint_step=int(s["step"]),
            best_metric=s.get("best_metric", s.get("best_val_loss"))
            if s.get("best_metric_name", "val_loss") == self.config.train.best_metric else None,
        )
        # A micro-batch that had to back off from an OOM stays backed off.
        saved = int(s.get("micro_batch_size", self.micro_batch_size))
        if saved < self.micro_batch_size:
            self.micro_batch_size = saved
            self.grad_accum_steps = self.rank_batch // saved

    def checkpoint_state(self) -> dict[str, Any]:
        st, b = self.state, self.backend
        return {
            "step": st.step,
            "tokens": st.tokens,
            "cursor": list(st.cursor),
            "elapsed_s": st.elapsed_s,
            "best_val_loss": st.best_val_loss,
            "best_step": st.best_step,
            "evals_since_best": st.evals_since_best,
            "best_metric": st.best_metric,
            "best_metric_name": self.config.train.best_metric,
            "optimizer_step": st.step,
            "micro_batch_size": self.micro_batch_size,
            # What the planner chose (a micro-batch backed off after an OOM as it is now):
            # a resumed run keeps these unless the user sets them.
            "plan": {"backend": b.name, "dtype": b.dtype, "compile": b.compile, "micro_batch_size": self.micro_batch_size,
                     "activation_checkpointing": self.plan.activation_checkpointing,
                     "parallel": self.plan.parallel, "world_size": self.dist.world_size},
            "world_size": self.dist.world_size,
            "data_split": "each step takes the next batch_size windows from the cursor; rank r trains on"
            " windows [r * batch_size / world_size, (r + 1) * batch_size / world_size) of them",
            "rng": b.rng_state(),
            "backend": {"name": b.name, "device": b.device, "dtype": b.dtype, "extra": b.extra_state()},
            "schedule": {
                "lr": lr_at(st.step, self.config.train, self.total_steps),
                "warmup_steps": self.config.train.warmup_steps,
                "total_steps": self.total_steps,
                "min_lr_ratio": self.config.train.min_lr_ratio,
            },
            "seed": self.config.train.seed,
            "config_fingerprint": self.config.fingerprint(),
            "config": self.config.to_dict(),  # a resume names the keys config.toml changed since
            "model_fingerprint": self.config.model_fingerprint(),
            "tokenizer_sha256": self.data.tokenizer_sha256,
            "vocab_size": self.data.vocab_size,
        }

    def save_checkpoint(self, reason: str) -> Path:
        """Every rank calls this at the same step; rank 0 writes, with every rank's RNG state."""
        start = self.clock()
        rngs = self.dist.gather_text(json.dumps(self.backend.rng_state()))
        self.state.last_checkpoint_step = self.state.step
        path = self.run_dir / "checkpoints" / checkpoint.step_dir_name(self.state.step)
        if not (self.dist.is_main or self.every_rank):
            return path
        weights, moments = self.backend.state_arrays()
        if not self.dist.is_main:
            return path
        state = self.checkpoint_state()
        if self.dist.world_size > 1:
            state["rng_ranks"] = [json.loads(r) for r in rngs]
        path, size = checkpoint.save(
            self.run_dir, self.state.step, weights, moments, state, self.config.train.keep_checkpoints,
        )
        self.emit(ev.Checkpoint(step=self.state.step, path=str(path), reason=reason, bytes=size,
                                seconds=self.clock() - start))
        return path

    # -- evaluation and samples ----------------------------------------------------------

    def val_words(self) -> int:
        """Words (WikiText convention) of the validation targets, counted once: the batches are fixed."""
        if getattr(self, "_val_words", None) is None:
            from localtrain.evaluate import token_words

            d = self.data
            self._val_words = sum(
                token_words(y[r], int(x[r, 0]), d.decode, d.eos_id) for x, y in self.val_batches for r in range(len(y))
            )
        return self._val_words

    def evaluate(self) -> ev.Eval:
        nats, count, nbytes = 0.0, 0, 0
        for x, y in self.val_batches:
            losses = self.backend.token_losses(x, y)
            nats += float(losses.astype(np.float64).sum())
            count += losses.size
            nbytes += int(self.data.token_bytes[y.astype(np.int64)].sum())
        if self.every_rank:
            # Every rank takes the same best-checkpoint decision (a collective gather).
            nats = self.dist.all_max([nats])[0]
        loss = nats / count
        words = self.val_words()
        st, t = self.state, self.config.train
        figures = {
            "val_loss": loss, "val_ppl": metrics.perplexity(loss), "val_bpb": metrics.bits_per_byte(nats, nbytes),
            "val_word_ppl": metrics.perplexity(nats / words) if words else float("nan"),
        }
        value = figures[t.best_metric]
        is_best = st.step > 0 and math.isfinite(value) and (
            st.best_metric is None or value < st.best_metric - t.early_stop_min_delta
        )
        if is_best:
            st.best_val_loss, st.best_metric, st.best_step, st.evals_since_best = loss, value, st.step, 0
        elif st.step > 0:
            st.evals_since_best += 1
        event = ev.Eval(
            step=st.step, val_loss=loss, val_ppl=figures["val_ppl"], val_bpb=figures["val_bpb"], val_tokens=count,
            val_bytes=nbytes, best_val_loss=st.best_val_loss if st.best_val_loss is not None else loss,
            is_best=is_best, val_words=words, val_word_ppl=figures["val_word_ppl"], best_metric=t.best_metric,
            best_value=st.best_metric if st.best_metric is not None else value,
        )
        self.emit(event)
        if is_best:
            weights, _ = self.backend.state_arrays()
            if self.dist.is_main:
                checkpoint.save_best(self.run_dir, weights, {**self.checkpoint_state(), "val_loss": loss,
                                                             t.best_metric: value})
        return event

    def sample(self, seed: int | None = None) -> None:
        """One live sample per prompt, each with its quality figures, then the batch's figures.

        Scheduled samples (`seed` None) draw from seeds fixed by train.seed and the step, so a
        rerun shows the same text; one asked for by a controller draws from the fresh `seed` it
        was given, so asking at a scheduled step shows new text, and its events say which seed.
        """
        from localtrain import quality

        t = self.config.train
        code = quality.is_code(self.config.data)
        manual = seed is not None
        base = seed if seed is not None else t.seed * 1_000_003 + self.state.step * 101
        found = []
        for i, prompt in enumerate(t.sample_prompts):
            ids = self.data.encode(prompt) or [self.data.eos_id]
            drawn = base + i
            out = sampling.generate(self.backend, ids, t.sample_tokens, t.temperature, t.top_k, drawn)
            if self.data.eos_id in out:
                out = out[: out.index(self.data.eos_id)]
            text = self.data.decode(out)
            q = quality.sample_quality(text, code, prompt)
            found.append(q)
            self.emit(ev.Sample(step=self.state.step, prompt=prompt, text=text, tokens=len(out), seed=drawn,
                                manual=manual, **q.to_dict()))
        self.emit(ev.SampleQuality(step=self.state.step, **quality.summarize(found)))

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> StepResult:
        """One optimizer step over the batch (x, y), backing off the micro-batch on OOM.

        An out-of-memory step is retried on the same sequences with half the micro-batch
        and twice the accumulation: the effective batch and the schedule do not change.
        """
        while True:
            m = self.micro_batch_size
            micro = [(x[i : i + m], y[i : i + m]) for i in range(0, len(x), m)]
            try:
                return self.backend.train_step(micro, lr)
            except OutOfMemory as exc:
                if self.dist.world_size > 1:
                    # One rank cannot back off alone: the others would wait for its gradients.
                    raise LocaltrainError(
                        f"Out of memory on rank {self.dist.rank} at step {self.state.step + 1} with"
                        f" micro-batch {m} ({exc}). Resume with a smaller one, e.g. --resume --set"
                        f" train.micro_batch_size={next_smaller_micro(len(x), m) or 1}."
                    ) from None
                smaller = next_smaller_micro(len(x), m)
                if smaller is None:
                    raise LocaltrainError(
                        f"Out of memory at step {self.state.step + 1} even with one sequence per"
                        f" micro-batch ({exc}). Lower model.seq_len, model.n_embd or data.vocab_size,"
                        " or free memory used by other programs."
                    ) from None
                self.micro_batch_size, self.grad_accum_steps = smaller, len(x) // smaller
                self.emit(ev.Warning(
                    code="oom_backoff",
                    message=f"Out of memory at step {self.state.step + 1} with micro-batch {m}: retrying"
                    f" with micro-batch {smaller} x {self.grad_accum_steps} accumulation steps (the"
                    f" same {len(x)} sequences per step).",
                ))

    # -- control -------------------------------------------------------------------------

    def obey_controller(self) -> float:
        """Carry out the controller's commands; returns the seconds spent paused."""
        if self.control is None:
            return 0.0
        paused_at: float | None = None
        while True:
            for command in self.control():
                if command == "sample":
                    seed = secrets.randbelow(2**31)  # fresh: a sample asked for shows new text
                    if self.every_rank:
                        self.sample_seed = seed  # taken at the next agreement, by every rank alike
                    else:
                        self.sample(seed)
                elif command == "checkpoint":
                    if self.dist.world_size == 1:
                        if self.state.last_checkpoint_step != self.state.step:
                            self.save_checkpoint("requested")  # at once, also while paused
                    else:
                        # Taken at the next agreement, so that every rank joins in.
                        self.checkpoint_requested = True
                elif command == "stop":
                    self.stop.request("interrupted")
                elif command == "pause" and paused_at is None:
                    paused_at = self.clock()
                    self.emit(ev.Status(state="paused", message=f"Paused after step {self.state.step}."))
                elif command == "resume" and paused_at is not None:
                    self.emit(ev.Status(state="running", message=f"Continuing from step {self.state.step}."))
                    return self.clock() - paused_at
            if paused_at is None:
                return 0.0
            if self.stop.requested:
                return self.clock() - paused_at
            time.sleep(0.1)

    # -- the loop ------------------------------------------------------------------------

    def _timed(self, kind: str, work: Callable[[], Any]) -> None:
        start = self.clock()
        work()
        self.eta.worked(kind, self.clock() - start)

    def run(self) -> ev.Done:
        t, st = self.config.train, self.state
        clock = self.clock
        started, base_elapsed = clock(), st.elapsed_s
        deadline = started + t.max_time * 60 if t.max_time else None
        tokens_per_step = self.plan.tokens_per_step
        self.emit(ev.Status(state="running", message=f"Training from step {st.step} to {self.total_steps}."))
        evaluates = self.dist.is_main or self.every_rank
        if st.step == 0 and t.eval_every and evaluates:
            self._timed("eval", self.evaluate)
        reason = "complete"
        tok_s_avg: float | None = None
        waiting_since: float | None = None
        while st.step < self.total_steps:
            paused_s = self.obey_controller()
            started += paused_s
            if deadline is not None:
                deadline += paused_s
            if paused_s and waiting_since is not None:
                waiting_since = None  # still waiting after a pause: say so again
            missing = self.windows.missing_phase(st.cursor, t.batch_size)
            # Every rank takes the same decisions at the same step: any rank's signal, the
            # clock, rank 0's early stop, its controller's checkpoint request, and any
            # rank's wait for data not prepared yet.
            stop, over_time, early, wanted, waiting, sample = self.dist.all_max([
                float(self.stop.requested), float(deadline is not None and clock() >= deadline),
                float(self.early_stop), float(self.checkpoint_requested), float(missing is not None),
                float(-1 if self.sample_seed is None else self.sample_seed),
            ])
            if sample >= 0:
                self.sample_seed = None
                self.sample(int(sample))
            if wanted:
                self.checkpoint_requested = False
                if st.last_checkpoint_step != st.step:
                    self.save_checkpoint("requested")
            if stop:
                reason = self.stop.reason
                self.emit(ev.Warning(message=f"Stop requested: checkpointing at step {st.step} and"
                                     " exiting.", code="stopping"))
                break
            if over_time:
                reason = "max_time"
                break
            if early:
                reason = "early_stop"
                break
            if waiting:
                # Like a pause, time spent waiting for the data is not training time.
                if waiting_since is None:
                    waiting_since = clock()
                    self.emit(ev.Status(state="waiting", message=self.windows.phases.describe(missing)
                                        if missing is not None else "Waiting for another process's data."))
                time.sleep(POLL_SECONDS)
                continue
            if waiting_since is not None:
                waited = clock() - waiting_since
                started += waited
                if deadline is not None:
                    deadline += waited
                waiting_since = None
                self.emit(ev.Status(state="running", message=f"The data is ready after {waited:.0f} s of waiting; "
                                    f"training continues from step {st.step}."))
            lr = lr_at(st.step, t, self.total_steps)
            taking = clock()
            x, y, cursor = self.windows.take(st.cursor, t.batch_size)
            mine = slice(self.dist.rank * self.rank_batch, (self.dist.rank + 1) * self.rank_batch)
            step_start = clock()
            result = self.train_step(x[mine], y[mine], lr)
            if self.dist.world_size > 1:
                result = dataclasses.replace(result, loss=self.dist.all_mean([result.loss])[0])
            now = clock()
            step_time = now - step_start
            self.eta.stepped(now - taking)
            if not math.isfinite(result.loss):
                self.emit(ev.Error(message=f"The loss became {result.loss} at step {st.step + 1}."))
                raise TrainingDiverged(
                    f"Training diverged: the loss became {result.loss} at step {st.step + 1} (learning"
                    f" rate {lr:.3g}). Nothing after step {st.last_checkpoint_step or 0} was saved."
                    " Resume from the last checkpoint with a lower peak rate, e.g. --resume --set"
                    f" train.lr={t.lr / 3:.2g}, or with more warmup steps."
                )
            st.step += 1
            st.tokens += tokens_per_step
            st.cursor = cursor
            st.elapsed_s = base_elapsed + (now - started)
            tok_s = tokens_per_step / step_time
            tok_s_avg = tok_s if tok_s_avg is None else 0.9 * tok_s_avg + 0.1 * tok_s
            self.emit(ev.Step(
                step=st.step, total_steps=self.total_steps, loss=result.loss, lr=lr,
                grad_norm=result.grad_norm, tokens=st.tokens, tokens_per_s=tok_s_avg,
                mfu=metrics.mfu(self.flops_per_token, tok_s_avg, self.peak_flops),
                step_time_s=step_time, elapsed_s=st.elapsed_s,
                eta_s=self.eta.seconds_left(st.step), memory_bytes=self.backend.memory_bytes(),
            ))
            last = st.step == self.total_steps
            if t.eval_every and (st.step % t.eval_every == 0 or last) and evaluates:
                self._timed("eval", self.evaluate)
            if t.sample_every and st.step % t.sample_every == 0 and evaluates:
                self._timed("sample", self.sample)
            if t.checkpoint_every and st.step % t.checkpoint_every == 0:
                self._timed("checkpoint", lambda: self.save_checkpoint("periodic"))
            if t.early_stop_patience and st.evals_since_best >= t.early_stop_patience:
                self.early_stop = True
        st.elapsed_s = base_elapsed + (clock() - started)
        if st.last_checkpoint_step != st.step:
            path: str | None = str(self.save_checkpoint("interrupt" if reason == "interrupted" else "final"))
        else:
            path = str(self.run_dir / "checkpoints" / checkpoint.step_dir_name(st.step))
        done = ev.Done(reason=reason, step=st.step, tokens=st.tokens, elapsed_s=st.elapsed_s,
                       best_val_loss=st.best_val_loss, checkpoint=path)
        self.emit(done)
        return done

