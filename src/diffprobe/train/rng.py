"""Per-step randomness: every random draw of training step ``s`` on rank ``r`` derives from ``(seed, s, r)``.

A step's randomness is thus a pure function of where it sits in the run, which makes a resumed run
bit-identical to an uninterrupted one without replaying any random stream.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

_GENERATOR_STREAM = 0
_GLOBAL_STREAM = 1


def step_seed(seed: int, step: int, rank: int, stream: int = _GENERATOR_STREAM) -> int:
    """A 63-bit seed mixed from ``(seed, step, rank, stream)`` (NumPy ``SeedSequence``; stable across machines)."""
    if min(seed, step, rank, stream) < 0:
        raise ValueError(f"step_seed: arguments must be >= 0, got seed={seed} step={step} rank={rank}")
    state = np.random.SeedSequence([seed, step, rank, stream]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The ``torch.Generator`` on ``device`` that step ``step`` of rank ``rank`` draws all its noise from."""
    gen = torch.Generator(device=device)
    gen.manual_seed(step_seed(seed, step, rank))
    return gen


def seed_step_globals(seed: int, step: int, rank: int) -> None:
    """Reseed the global torch (all devices), NumPy and Python RNGs for this step.

    Covers randomness a model draws without the step generator (``nn.Dropout``, ``torch.randn`` without
    ``generator=``), so that it too is a pure function of the step.
    """
    s = step_seed(seed, step, rank, _GLOBAL_STREAM)
    torch.manual_seed(s)
    np.random.seed(s % (2**32))
    random.seed(s)


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA, NumPy, Python) in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
