"""The per-rank memory of a sharded (FSDP) run, and the choice between DDP and FSDP.

Under DDP every process holds the whole model state: fp32 weights, fp32 gradients and
two AdamW moments, 16 bytes a parameter. Under FSDP each of W processes holds 1/W of
those and gathers the full parameters of one transformer block at a time (and the next
one, prefetched) for its forward and backward; the root's own parameters (the tied
embedding and the final norm) stay gathered from the start of the forward to the end of
the backward. `sharded_terms` turns that into named bytes; the planner adds the
activations, which sharding does not change.
"""

from __future__ import annotations

from localtrain.config import ModelConfig
from localtrain.errors import LocaltrainError
from localtrain.metrics import block_params, root_params

GB = 1024**3


def gathered_bytes(dtype: str, device: str) -> int:
    """Bytes per gathered parameter: the compute dtype on a GPU (FSDP's mixed-precision
    policy gathers in it), fp32 on a CPU (the gloo job gathers fp32 and autocast casts)."""
    return 2 if dtype != "float32" and device == "cuda" else 4


def sharded_terms(
    model: ModelConfig, vocab_rows: int, dtype: str, device: str, world_size: int,
    accumulate_unsharded: bool = False,
) -> dict[str, int]:
    """The model-state terms of one rank's peak under FSDP over `world_size` processes.

    These replace the replicated `weights`, `weight_casts`, `gradients` and `optimizer`
    terms of the planner's estimate; activations, logits and overhead stay as they are.
    """
    root, block = root_params(model, vocab_rows), block_params(model)
    p = model.n_layer * block + root
    g = gathered_bytes(dtype, device)

    def share(nbytes: int) -> int:
        return -(-nbytes // world_size)

    return {
        # fp32 masters, gradients and moments: each rank owns 1/W of the rows.
        "weights": share(4 * p),
        # On a CPU autocast keeps a 16-bit copy of every gathered weight until the
        # backward has used it; a GPU gathers in 16 bits and needs no copy.
        "weight_casts": 2 * p if dtype != "float32" and device != "cuda" else 0,
        "gradients": share(4 * p),
        "optimizer": share(8 * p),
        # The root for the whole step, the block computing and the one prefetched.
        "gathered_weights": g * (root + 2 * block),
        # The root's full gradient lives from the logits' backward to the end; a block's
        # full gradient and its fp32 reduce-scatter input exist while it is reduced.
        "gathered_gradients": g * root + (g + 4) * block,
        # Accumulating without a reduce-scatter per micro-batch holds the full gradient
        # (FSDP accumulates it in fp32) until the step's last micro-batch.
        "held_gradients": 4 * p if accumulate_unsharded else 0,
    }


def choose_parallel(
    requested: str, world_size: int, device: str, replicated_min: int, sharded_min: int, usable: int,
    resumed: str | None = None,
) -> tuple[str, list[str]]:
    """("none" | "ddp" | "fsdp", notes) for a job of `world_size` processes.

    `replicated_min` and `sharded_min` are the predicted per-rank peaks at one sequence
    per micro-batch with activation checkpointing, under DDP and under FSDP; `usable`
    is one device's budget. `auto` shards only when the replicated run cannot fit at
    all and the sharded one can: DDP communicates less, so it wins whenever it fits.
    `resumed`: the mode of the checkpoint a run continues from on the same number of
    processes; under `auto` a sharded run stays sharded while that fits, as a resumed
    run keeps its other choices.
    """
    if requested == "fsdp":
        if device not in ("cpu", "cuda"):
            raise LocaltrainError(
                f"run.parallel = fsdp: FSDP runs on CUDA GPUs (NCCL) or on CPUs (gloo), not on {device}."
                " Use --device cuda or --device cpu, or --set run.parallel=auto."
            )
        return "fsdp", [f"FSDP: weights, gradients and AdamW moments are sharded over {world_size}"
                        f" process{'es' if world_size > 1 else ''}."]
    if world_size == 1:
        return "none", []
    if requested == "auto" and resumed == "fsdp" and sharded_min <= usable:
        return "fsdp", [f"FSDP over {world_size} processes, as the run was started (from its checkpoint)."]
    if requested == "auto" and replicated_min > usable >= sharded_min:
        return "fsdp", [
            f"FSDP: under DDP each process would need {replicated_min / GB:.2f} GiB even at micro-batch 1 with"
            f" activation checkpointing, over the budget of {usable / GB:.2f} GiB; sharded over"
            f" {world_size} processes it needs {sharded_min / GB:.2f} GiB."
        ]
    return "ddp", []
