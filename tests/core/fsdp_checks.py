"""A torchrun worker that trains the FSDP backend beside an unsharded one and reports how far apart they are.

Every rank builds the same plain `TorchBackend` as a reference and trains it on the whole
batch in one micro-batch; the FSDP backend trains on this rank's share in two
micro-batches, in each accumulation mode and with activation checkpointing. Rank 0
prints one JSON object: the largest differences (loss, clipped gradient norm, weights,
moments, evaluation, generation) and what each mode left between micro-batches.

`fsdp_checks.py cuda` runs the same on GPUs (NCCL) in fp32 without TF32, and adds a
compiled bf16 run under FSDP's mixed-precision policy.
"""

import json
import sys

import numpy as np
import torch
from torch.distributed.tensor import DTensor

from localtrain import sampling
from localtrain.backends.torch_backend import TorchBackend
from localtrain.backends.torch_dist import init
from localtrain.backends.torch_fsdp import FSDPBackend
from localtrain.config import ModelConfig, TrainConfig

# Grouped-query attention: the q/k/v rows interleave inside one sharded matrix.
MODEL = ModelConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, seq_len=16)
# A small clip: every step is clipped, so the norm over the shards decides the update.
TRAIN = TrainConfig(lr=3e-3, grad_clip=0.05, weight_decay=0.1)
VOCAB, SEED, STEPS, BATCH = 61, 3, 3, 8

DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cpu"
dist = init(DEVICE)
rank = dist.rank
SHARE = BATCH // dist.world_size
rng = np.random.default_rng(0)
batches = []
for _ in range(STEPS + 1):
    tokens = rng.integers(0, VOCAB, (BATCH, MODEL.seq_len + 1)).astype(np.uint16)
    batches.append((tokens[:, :-1], tokens[:, 1:]))
lrs = [3e-3, 2e-3, 1e-3, 1e-3]


def exact_float32() -> None:
    # The backend allows TF32 on CUDA; matmuls of other shapes would then round differently.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def reference(dtype: str = "float32") -> tuple[TorchBackend, list]:
    b = TorchBackend(DEVICE, dtype)
    exact_float32()
    b.build(MODEL, VOCAB, SEED)
    b.configure_optimizer(TRAIN)
    return b, [b.train_step([batch], lr) for batch, lr in zip(batches[:STEPS], lrs)]


def sharded(unsharded: bool = False, checkpointing: bool = False, dtype: str = "float32",
            compile: bool = False) -> FSDPBackend:
    b = FSDPBackend(DEVICE, dtype, 0, compile)
    exact_float32()
    b.set_distributed(dist)
    b.build(MODEL, VOCAB, SEED)
    b.configure_optimizer(TRAIN)
    b.set_accumulation(unsharded)
    b.set_activation_checkpointing(checkpointing)
    return b


def mine(batch) -> list:
    """This rank's share of the batch, as two micro-batches."""
    x, y = batch
    share = slice(rank * SHARE, (rank + 1) * SHARE)
    x, y = x[share], y[share]
    return [(x[: SHARE // 2], y[: SHARE // 2]), (x[SHARE // 2 :], y[SHARE // 2 :])]


def between_micro_batches(b: FSDPBackend) -> dict:
    """What FSDP holds when the second micro-batch starts: reduced (sharded) gradients, or
    none yet; the root's parameters still gathered, or sharded again."""
    seen = {}
    original = b._gradient_sync

    def spy(last: bool):
        if last and not seen:
            block = b.model.model.layers[0].mlp.down_proj.weight
            seen["sharded_grads"] = block.grad is not None
            seen["root_gathered"] = not isinstance(b.model.model.embed_tokens.weight, DTensor)
        return original(last)

    b._gradient_sync = spy
    return seen


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), (sorted(a)[:3], sorted(b)[:3])
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


ref, ref_results = reference()
ref_weights, ref_moments = ref.state_arrays()
report: dict = {}
for label, kwargs in (("per_micro_batch", {}), ("unsharded", {"unsharded": True}),
                      ("checkpointing", {"checkpointing": True})):
    b = sharded(**kwargs)
    seen = between_micro_batches(b)
    results = [b.train_step(mine(batch), lr) for batch, lr in zip(batches[:STEPS], lrs)]
    losses = [dist.all_mean([r.loss])[0] for r in results]
    weights, moments = b.state_arrays()
    if rank == 0:
        report[label] = {
            "loss": max(abs(a - r.loss) for a, r in zip(losses, ref_results)),
            "grad_norm": max(abs(a.grad_norm - r.grad_norm) for a, r in zip(results, ref_results)),
            "weights": max_diff(weights, ref_weights),
            "moments": max_diff(moments, ref_moments),
            **seen,
        }
    else:
        report[label] = {"nothing_on_other_ranks": not weights and not moments}

# Resume: a fresh sharded backend loads the reference's full arrays and carries on exactly.
b = sharded()
b.load_state_arrays(ref_weights, ref_moments, STEPS)
weights, moments = b.state_arrays()
x, y = batches[STEPS]
loaded = {
    # Generation first: the sharded model's first forward, which later training steps follow.
    "generate": sampling.generate(b, [1, 2, 3], 12, 0.8, 10, 7) == sampling.generate(ref, [1, 2, 3], 12, 0.8, 10, 7),
    "eval": float(np.abs(b.token_losses(x, y) - ref.token_losses(x, y)).max()),
    "roundtrip": max_diff(weights, ref_weights) if rank == 0 else 0.0,
}
# How far the sharded decoder's scores are from the unsharded one's, from the cache and without.
mine_dec, ref_dec = b.decoder(), ref.decoder()
gaps = [float(np.abs(mine_dec.start([1, 2, 3]) - ref_dec.start([1, 2, 3])).max())]
gaps += [float(np.abs(mine_dec.extend(t) - ref_dec.extend(t)).max()) for t in (4, 5, 6)]
loaded["decode_gap"] = max(gaps)
after, ref_after = b.train_step(mine(batches[STEPS]), lrs[STEPS]), ref.train_step([batches[STEPS]], lrs[STEPS])
loaded["next_loss"] = abs(dist.all_mean([after.loss])[0] - ref_after.loss)
# The update after the load used the loaded moments and step count.
weights, _ = b.state_arrays()
loaded["next_weights"] = max_diff(weights, ref.state_arrays()[0]) if rank == 0 else 0.0
report["loaded"] = loaded
# float16 with a loss scale: the sharded scaler agrees on overflows across ranks.
_, half_results = reference("float16")
b = sharded(dtype="float16")
results = [b.train_step(mine(batch), lr) for batch, lr in zip(batches[:STEPS], lrs)]
report["float16"] = max(abs(dist.all_mean([a.loss])[0] - r.loss) for a, r in zip(results, half_results))
if DEVICE == "cuda":
    # Blocks gathered in bf16 (reductions in fp32), each compiled: close to the fp32 run.
    b = sharded(dtype="bfloat16", compile=True)
    results = [b.train_step(mine(batch), lr) for batch, lr in zip(batches[:STEPS], lrs)]
    losses = [dist.all_mean([r.loss])[0] for r in results]
    report["bf16_compiled"] = max(abs(a - r.loss) for a, r in zip(losses, ref_results))
if rank == 0:
    print(json.dumps(report))
dist.barrier()
dist.close()
sys.exit(0)
