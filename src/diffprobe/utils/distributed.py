"""torch.distributed set-up for runs launched by ``torchrun``; a plain single process otherwise.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous variables) for each
process it starts; :func:`setup_distributed` reads them, picks the NCCL backend on CUDA and Gloo otherwise,
and binds each process to GPU ``LOCAL_RANK``. Without those variables nothing is initialised and the
context says rank 0 of 1. Side effects (files, logs, progress bars) belong to rank 0 only (``ctx.is_main``).

Besides the main group (NCCL on CUDA), every distributed process holds a Gloo group with a long timeout
(:data:`WAIT_TIMEOUT`) for the waits and small object exchanges of work that is not in lock step: ranks waiting for
each other's share of a feature extraction, or for rank 0 alone (generation, report); :func:`wait_for_all`,
:func:`broadcast_object` and :func:`gather_objects` use it, so such a wait is not cut short by NCCL's watchdog.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diffprobe.utils.runtime import resolve_device

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: how long a rank waits in :func:`wait_for_all` / :func:`gather_objects` (rank 0 alone may run a long stage)
WAIT_TIMEOUT = datetime.timedelta(hours=24)
T = TypeVar("T")

_wait_group: Any = None  #: the Gloo group of the waits, created by setup_distributed on every rank


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: its rank, the number of ranks, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when a process group is active (launched by torchrun)."""
        return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    """Whether the torchrun environment variables are set."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from e


def setup_distributed(device: str = "auto") -> DistContext:
    """Initialise the process group if launched by torchrun (idempotent); return this process's context.

    ``device`` is resolved with :func:`resolve_device`; under torchrun a CUDA device becomes ``cuda:LOCAL_RANK``.
    """
    base = resolve_device(device)
    if not launched_by_torchrun():
        return DistContext(rank=0, world_size=1, local_rank=0, device=base)
    rank, world_size, local_rank = (_env_int(v) for v in TORCHRUN_VARS)
    if base.type == "cuda":
        base = torch.device("cuda", local_rank)
        torch.cuda.set_device(base)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo")
    if dist.get_rank() != rank or dist.get_world_size() != world_size:
        raise RuntimeError(f"process group (rank {dist.get_rank()} of {dist.get_world_size()}) disagrees with "
                           f"the environment (RANK={rank}, WORLD_SIZE={world_size})")
    global _wait_group
    if _wait_group is None:  # collective: every rank reaches its first setup_distributed together
        _wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=base)


def cleanup_distributed() -> None:
    """Destroy the process group if one is active (call once, at the end of a command)."""
    global _wait_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _wait_group = None


def wrap_model(model: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap in DistributedDataParallel when distributed (the model must already be on ``ctx.device``)."""
    if not ctx.is_distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.is_distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_mean(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Average scalar metrics over ranks (every rank must pass the same keys); identity in a single process."""
    if not ctx.is_distributed:
        return dict(values)
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)  # (K,)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    packed /= ctx.world_size
    return dict(zip(keys, packed.tolist(), strict=True))


def wait_for_all(ctx: DistContext) -> None:
    """Wait for every rank, however long (up to :data:`WAIT_TIMEOUT`), on the Gloo group; no-op in a single process.

    For ranks that finish their share early (an extraction resumed with some ranks' shards on disk) or that wait
    for rank 0 alone; :func:`barrier` is for ranks in lock step."""
    if ctx.is_distributed:
        dist.barrier(group=_wait_group)


def broadcast_object(obj: T, ctx: DistContext) -> T:
    """Rank 0's ``obj`` (picklable) on every rank: decisions that every rank must take alike (what is left to do,
    read from disk by rank 0) are broadcast, so ranks never take different paths. Identity in a single process."""
    if not ctx.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_wait_group)
    return box[0]


def gather_objects(obj: T, ctx: DistContext) -> list[T] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; ``None`` on the other ranks. ``[obj]`` in a single
    process."""
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0, group=_wait_group)
    return out


def rank_share(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's items of a sequence every rank holds alike: item ``i`` goes to rank ``i % world_size``
    (round-robin; all of them in a single process)."""
    return list(items[ctx.rank::ctx.world_size])
