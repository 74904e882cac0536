"""A real Trainer on the small code corpus, for tests that drive the loop directly."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import FP32, TINY
from localtrain import config as cfg, hardware, planner
from localtrain.data.prepare import prepare
from localtrain.train import TrainData, Trainer


def make_trainer(code_corpus: Path, run_dir: Path, emit, backend, overrides: list[str],
                 clock=time.perf_counter) -> Trainer:
    """A Trainer over the prepared corpus with `backend` built for the TINY float32 model."""
    config = cfg.resolve("python-stdlib", TINY + FP32 + [f"data.source={code_corpus}", *overrides])
    prepared = prepare(config.data, lambda e: None)
    tok = prepared.tokenizer()
    backend.build(config.model, prepared.vocab_size, config.train.seed)
    backend.configure_optimizer(config.train)
    data = TrainData(
        train_tokens=prepared.load("train"), val_tokens=prepared.load("val"), token_bytes=tok.token_bytes(),
        encode=tok.encode, decode=tok.decode, eos_id=tok.eos_id, tokenizer_sha256=tok.sha256,
        vocab_size=prepared.vocab_size,
    )
    run_dir.mkdir()
    plan = planner.plan(config, hardware.probe(), vocab_size=prepared.vocab_size)
    return Trainer(config, backend, data, run_dir, emit, plan, 1e9, clock=clock)
