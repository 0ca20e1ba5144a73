"""Data as a pure function of the step: ``batches(step) -> batch``.

:func:`make_batch_fn` lays the dataset out as an endless stream of epochs, each a seeded permutation of all
indices. Step ``s`` takes global positions ``[s * B, (s + 1) * B)`` of that stream (``B`` = global batch
size) and rank ``r`` of ``W`` takes its contiguous ``B / W`` slice. So the examples of a step do not depend
on what ran before (exact resume) nor on the number of ranks (the union over ranks is the same batch).

:class:`BatchFeed` is how the loop gets them: in its own process, or from worker processes that prepare the next
batches while the device computes (pinned, for an asynchronous copy to a GPU), with the same batches and the same
random state either way.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from diffprobe.train.rng import seed_step_globals, step_seed


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


#: the most worker processes ``data_workers="auto"`` starts per rank
AUTO_WORKERS = 4


def resolve_workers(data_workers: int | Literal["auto"], device: torch.device) -> int:
    """Worker processes for :class:`BatchFeed`: a number as given; ``"auto"`` is up to :data:`AUTO_WORKERS` on CUDA
    (the CPU cores shared by this node's ranks, one left to each rank) and 0 on any other device, where workers
    would take cores from the training itself."""
    if data_workers != "auto":
        return data_workers
    if device.type != "cuda":
        return 0
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun; a plain process is alone
    return max(1, min(AUTO_WORKERS, (os.cpu_count() or 1) // ranks_here - 1))


class _HostRNG:
    """The host RNG states (torch CPU, NumPy, Python) as one opaque object, which the DataLoader passes through
    without converting (it would turn NumPy arrays into tensors and tuples into lists)."""

    def __init__(self) -> None:
        self.torch, self.numpy, self.python = torch.get_rng_state(), np.random.get_state(), random.getstate()

    def restore(self) -> None:
        torch.set_rng_state(self.torch)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


def _as_is(item: Any) -> Any:
    """The DataLoader's ``collate_fn``: batches arrive exactly as ``batches(step)`` made them."""
    return item


class _StepBatches(Dataset):
    """Item ``i``: the batch of step ``start + i`` made after reseeding the global RNGs for that step (as the loop
    does), with the host RNG states it left behind."""

    def __init__(self, batches: Callable[[int], Any], start: int, stop: int, seed: int, rank: int) -> None:
        self.batches, self.start, self.stop, self.seed, self.rank = batches, start, stop, seed, rank

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> tuple[Any, _HostRNG]:
        step = self.start + i
        seed_step_globals(self.seed, step, self.rank)
        batch = self.batches(step)
        return batch, _HostRNG()


class BatchFeed:
    """The batches of steps ``start, start + 1, ..., stop - 1``, asked for in that order with :meth:`get`.

    With ``workers == 0`` :meth:`get` calls ``batches(step)`` in this process (the caller has reseeded the global
    RNGs for the step). With workers, a ``DataLoader`` runs ``batches`` ahead in ``workers`` processes, each step
    after the same reseed, and :meth:`get` also restores the host RNG states (torch CPU, NumPy, Python) that the
    worker's ``batches(step)`` left, so the step that follows draws exactly what it would have drawn in process.
    ``pin`` puts host tensors in page-locked memory (in a background thread), for ``non_blocking`` copies to CUDA.
    """

    def __init__(self, batches: Callable[[int], Any], start: int, stop: int, seed: int, rank: int, workers: int,
                 pin: bool) -> None:
        if workers < 0:
            raise ValueError(f"BatchFeed: workers must be >= 0, got {workers}")
        self.batches, self.next_step, self.stop = batches, start, stop
        self._iter = None
        if workers > 0 and stop > start:
            loader = DataLoader(_StepBatches(batches, start, stop, seed, rank), batch_size=None, shuffle=False,
                                num_workers=workers, collate_fn=_as_is, pin_memory=pin, prefetch_factor=2,
                                generator=torch.Generator().manual_seed(seed))  # leaves the global RNG alone
            self._iter = iter(loader)

    def get(self, step: int) -> Any:
        """The batch of ``step`` (the next one in order)."""
        if step != self.next_step or step >= self.stop:
            raise ValueError(f"BatchFeed: asked for step {step}, expected step {self.next_step} (of < {self.stop})")
        self.next_step += 1
        if self._iter is None:
            return self.batches(step)
        batch, rng = next(self._iter)
        rng.restore()
        return batch

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        self._iter = None  # the iterator shuts its workers down when it is dropped
