"""Work done in chunks that shrink when the device runs out of memory: the one back-off that a feature extraction's
forwards and a VAE's calls share."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import torch
from tqdm.auto import tqdm

T = TypeVar("T")


class HalvingChunks:
    """``fn`` on consecutive chunks of at most ``size`` elements (0: all at once). A chunk that runs out of device
    memory is retried at half its length, said once on stderr (``NAME: out of device memory at N WHAT a CALL; going
    on at M``), and every later chunk (of this call and the next ones) goes on at that size; at one element the error
    is raised."""

    def __init__(self, size: int, what: str, name: str, call: str = "VAE call") -> None:
        self.size, self.what, self.name, self.call = size, what, name, call

    def run(self, total: int, fn: Callable[[int, int], T]) -> list[T]:
        """``fn(start, length)`` of consecutive chunks covering ``0..total-1``, in order."""
        parts, start = [], 0
        while start < total:
            n = min(self.size or total, total - start)
            try:
                parts.append(fn(start, n))
            except torch.OutOfMemoryError:
                if n == 1:
                    raise
                self.size = (n + 1) // 2
                tqdm.write(f"{self.name}: out of device memory at {n} {self.what} a {self.call}; going on at "
                           f"{self.size}", file=sys.stderr)
                if torch.cuda.is_initialized():
                    torch.cuda.empty_cache()
                continue
            start += n
        return parts

    def __call__(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dim: int) -> torch.Tensor:
        """``fn`` on chunks of ``x`` along ``dim``, the outputs concatenated along the same dim."""
        parts = self.run(x.shape[dim], lambda start, n: fn(x.narrow(dim, start, n)))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)
