"""The event stream: typed events, one flushed JSON line each, read back incrementally."""

from __future__ import annotations

import json
import math

from localtrain import events as ev


def test_every_event_round_trips(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    writer = ev.EventWriter(path)
    written = [
        ev.Plan(backend="torch", device="cpu", dtype="float32", params=10, vocab_size=68, seq_len=8,
                batch_size=2, micro_batch_size=1, grad_accum_steps=2, tokens_per_step=16, total_steps=5,
                flops_per_token=60.0, peak_flops=1e9, threads=2, compiled=False, train_tokens=100, val_tokens=10),
        ev.Prepare(stage="read", message="read", files=3),
        ev.Tune(stage="measured", candidate="float32 eager, micro-batch 2", status="ok", step_s=0.1,
                tokens_per_s=160.0, peak_bytes=1 << 20, warmup_s=0.0, message="first step 0.12 s, 3 timed"),
        ev.Download(url="http://x", bytes=5, total=10, bytes_per_s=1.0, eta_s=5.0),
        ev.Step(step=1, total_steps=5, loss=2.5, lr=1e-3, grad_norm=1.0, tokens=16, tokens_per_s=100.0,
                mfu=0.5, step_time_s=0.1, elapsed_s=0.1, eta_s=0.4, memory_bytes=1),
        ev.Eval(step=1, val_loss=2.0, val_ppl=math.exp(2.0), val_bpb=1.0, val_tokens=8, val_bytes=20,
                best_val_loss=2.0, is_best=True),
        ev.Sample(step=1, prompt="def ", text="f():", tokens=3),
        ev.SampleQuality(step=1, samples=3, repetition_ratio=0.25, distinct_1=0.5, distinct_2=0.75,
                         collapse_rate=0.0, unique_chars=12.0, keyword_rate=1.0, parse_rate=0.5),
        ev.Checkpoint(step=1, path="p", reason="periodic", bytes=10, seconds=0.1),
        ev.Status(state="paused", message="by a controller"),
        ev.Warning(message="careful", code="c"),
        ev.Error(message="bad"),
        ev.Done(reason="complete", step=5, tokens=80, elapsed_s=1.0, best_val_loss=2.0, checkpoint="p"),
    ]
    for e in written:
        writer(e)
        # Flushed as written: another process sees the line at once.
        assert path.read_text().count("\n") == written.index(e) + 1
    writer.close()
    assert ev.read_events(path) == written
    assert {json.loads(line)["type"] for line in path.read_text().splitlines()} == set(ev.EVENT_TYPES)


def test_incremental_reads_leave_a_partial_line_for_later(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    first = ev.Warning(message="one")
    second = ev.Warning(message="two")
    line2 = second.to_json() + "\n"
    path.write_text(first.to_json() + "\n" + line2[:10])
    got, offset = ev.read_new(path)
    assert got == [first]
    with open(path, "a") as f:
        f.write(line2[10:])
    got, offset2 = ev.read_new(path, offset)
    assert got == [second] and offset2 == path.stat().st_size
    assert ev.read_new(path, offset2) == ([], offset2)


def test_unknown_types_and_damaged_lines_are_skipped(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "from-the-future", "x": 1}\nnot json\n' + ev.Error(message="e").to_json() + "\n")
    assert [type(e) for e in ev.read_events(path)] == [ev.Error]


def test_non_finite_floats_are_written_as_null() -> None:
    line = ev.Step(step=1, total_steps=1, loss=float("nan"), lr=0.1, grad_norm=float("inf"), tokens=1,
                   tokens_per_s=1.0, mfu=0.0, step_time_s=1.0, elapsed_s=1.0, eta_s=0.0, memory_bytes=0).to_json()
    obj = json.loads(line)  # strict JSON
    assert obj["loss"] is None and obj["grad_norm"] is None
