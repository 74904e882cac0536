"""Where this process stands in a data-parallel job, as the loop sees it.

A single process is `Single`; under torchrun the torch backend provides the same
interface over its process group (localtrain.backends.torch_dist). The loop calls these
between steps so that every rank takes every decision (stop, checkpoint) at the same step.
"""

from __future__ import annotations

from typing import Protocol


class Dist(Protocol):
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool: ...

    def all_max(self, values: list[float]) -> list[float]: ...

    def all_mean(self, values: list[float]) -> list[float]: ...

    def barrier(self) -> None: ...

    def broadcast_text(self, text: str) -> str: ...

    def gather_text(self, text: str) -> list[str]: ...

    def close(self) -> None: ...


class Single:
    """The one process of a run that is not distributed."""

    rank = 0
    world_size = 1
    local_rank = 0
    local_world_size = 1
    is_main = True

    def all_max(self, values: list[float]) -> list[float]:
        return list(values)

    def all_mean(self, values: list[float]) -> list[float]:
        return list(values)

    def barrier(self) -> None:
        pass

    def broadcast_text(self, text: str) -> str:
        return text

    def gather_text(self, text: str) -> list[str]:
        return [text]

    def close(self) -> None:
        pass
