"""Batching Clip dicts for a ``DataLoader``: clips differ in their object count K, so boxes are padded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

PADDED_FIELDS = ("boxes", "box_visible")  # (K, T, ...) per clip, K varies


def collate_clips(clips: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack clips into tensors with a leading batch axis B; ``boxes`` / ``box_visible`` are padded to the largest K
    with zeros / False (padded boxes are never visible). Use as ``DataLoader(..., collate_fn=collate_clips)``."""
    out: dict[str, torch.Tensor] = {}
    kmax = max((len(c["boxes"]) for c in clips if "boxes" in c), default=0)
    for key, first in clips[0].items():
        values = [c[key] for c in clips]
        if isinstance(first, (int, np.integer)):
            out[key] = torch.tensor([int(v) for v in values], dtype=torch.int64)  # (B,)
        elif isinstance(first, np.ndarray):
            if key in PADDED_FIELDS:
                values = [np.concatenate([v, np.zeros((kmax - len(v),) + v.shape[1:], v.dtype)]) for v in values]
            out[key] = torch.from_numpy(np.stack(values))  # (B, ...)
        else:
            raise TypeError(f"collate_clips: field {key!r} of type {type(first).__name__} cannot be batched")
    return out
