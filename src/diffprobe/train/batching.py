"""Data as a pure function of the step: ``batches(step) -> batch``.

:func:`make_batch_fn` lays the dataset out as an endless stream of epochs, each a seeded permutation of all
indices. Step ``s`` takes global positions ``[s * B, (s + 1) * B)`` of that stream (``B`` = global batch
size) and rank ``r`` of ``W`` takes its contiguous ``B / W`` slice. So the examples of a step do not depend
on what ran before (exact resume) nor on the number of ranks (the union over ranks is the same batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Protocol

import torch
from torch.utils.data import default_collate

from diffprobe.train.rng import step_seed


class MapDataset(Protocol):
    """Anything with ``len()`` and integer indexing (a ``torch.utils.data.Dataset`` with ``__len__``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the dataset in ``epoch``: a permutation of ``range(num_items)`` seeded by ``(seed, epoch)``."""
    gen = torch.Generator()
    gen.manual_seed(step_seed(seed, epoch, 0, stream=2))
    return torch.randperm(num_items, generator=gen)  # (num_items,)


def batch_indices(step: int, num_items: int, batch_size: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> list[int]:
    """Dataset indices of rank ``rank``'s share of step ``step`` (``batch_size`` is the global batch)."""
    if batch_size % world_size:
        raise ValueError(f"global batch size {batch_size} is not divisible by world size {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    local = batch_size // world_size
    start = step * batch_size + rank * local
    out = []
    for pos in range(start, start + local):
        epoch, offset = divmod(pos, num_items)
        out.append(int(_cached_permutation(num_items, seed, epoch)[offset]))
    return out


@lru_cache(maxsize=4)
def _cached_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    return epoch_permutation(num_items, seed, epoch)


def make_batch_fn(
    dataset: MapDataset,
    batch_size: int,
    seed: int,
    collate: Callable[[Sequence[Any]], Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Callable[[int], Any]:
    """``batches(step)``: rank ``rank``'s ``batch_size // world_size`` examples of step ``step``, collated.

    ``collate`` defaults to ``torch.utils.data.default_collate`` (stacks tensors and arrays, recurses into dicts).
    """
    num_items = len(dataset)
    if num_items < 1:
        raise ValueError(f"make_batch_fn: the dataset {type(dataset).__name__} is empty")
    if batch_size < 1:
        raise ValueError(f"make_batch_fn: batch_size must be >= 1, got {batch_size}")
    batch_indices(0, num_items, batch_size, seed, rank, world_size)  # validate the sharding now, not at step 0
    collate_fn = default_collate if collate is None else collate

    def batches(step: int) -> Any:
        return collate_fn([dataset[i] for i in batch_indices(step, num_items, batch_size, seed, rank, world_size)])

    return batches
