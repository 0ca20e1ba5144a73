"""How every probe is trained (:class:`ProbeConfig`) and how many probes share one vectorised bank: what the study's
plan and estimate read without importing the probe trainer (:mod:`~diffprobe.tasks.probing`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from diffprobe.config import Config, ConfigError
from diffprobe.readouts.config import ReadoutConfig


@dataclasses.dataclass(frozen=True)
class ProbeConfig(Config):
    """How every probe is trained (the readout's size and learning rates live in ``readout``)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU-sized: one learning rate, about 6 epochs of 2k clips; validation every 100 steps keeps each probe's
        # best state (tiny probes overfit trained-WALT features within a few hundred steps); banks capped by FLOPs a
        # step (docs/readouts.md gives the measurements behind the cap).
        "tiny": {"readout": {**ReadoutConfig.PRESETS["tiny"], "learning_rates": [2e-3]}, "steps": 400,
                 "batch_size": 32, "warmup_steps": 20, "eval_every": 100, "bank_gflop": 5.0},
        "base": {"readout": ReadoutConfig.PRESETS["base"], "steps": 20_000, "batch_size": 128,
                 "warmup_steps": 1000, "eval_every": 2000},
    }

    readout: ReadoutConfig = dataclasses.field(default_factory=ReadoutConfig)
    steps: int = 500  #: optimiser steps of every probe
    batch_size: int = 32
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01  #: the cosine schedule ends at this fraction of each probe's rate
    grad_clip: float = 1.0  #: per-probe gradient-norm clip; 0 disables
    eval_batch_size: int = 64
    seed: int = 0  #: probe seed: initialisation and batch order
    train_queries: int = 16  #: point tracking: random tracks per clip in a training step (0: all)
    eval_every: int = 0  #: score validation every N steps and keep each probe's best state (0: the final state)
    #: GB that one bank's stacked batch may take (features and readout activations, see :func:`bank_size`); a
    #: larger bank is split into several
    bank_memory_gb: float = 4.0
    #: most probes in one bank (0: as many as ``bank_memory_gb`` allows); on a CPU, banks past a few probes of a
    #: heavy task (depth, tracking) outgrow the caches and cost more per probe (README, benchmarks/bench_probes.py)
    bank_size: int = 0
    #: most GFLOP one bank step may count (0: no cap), counted on one probe's step: on a CPU a bank past a few GFLOP
    #: a step outgrows the caches, so light tasks take many probes a bank and heavy ones few
    bank_gflop: float = 0.0

    def validate(self) -> None:
        if self.train_queries < 0:
            raise ConfigError(f"ProbeConfig.train_queries: must be >= 0, got {self.train_queries}")
        for name in ("steps", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ProbeConfig.{name}: must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ConfigError(f"ProbeConfig.eval_every: must be >= 0, got {self.eval_every}")
        if self.bank_gflop < 0:
            raise ConfigError(f"ProbeConfig.bank_gflop: must be >= 0, got {self.bank_gflop}")
        if self.bank_size < 0:
            raise ConfigError(f"ProbeConfig.bank_size: must be >= 0, got {self.bank_size}")
        if self.bank_memory_gb <= 0:
            raise ConfigError(f"ProbeConfig.bank_memory_gb: must be positive, got {self.bank_memory_gb}")


def bank_size(cfg: ProbeConfig, feature_shape: Sequence[int], batch: int | None = None,
              step_flops: float | None = None) -> int:
    """How many probes one bank holds: at most ``cfg.bank_size`` (if set), within ``cfg.bank_memory_gb`` for each
    probe's batch (``batch`` clips, default ``cfg.batch_size``) of fp32 features and normalised features (2C per
    token) and of the readout's activations (about 8 of its width per token), and, given one probe's training
    ``step_flops``, within ``cfg.bank_gflop`` (if set) a bank step."""
    *grid, c = feature_shape
    per_probe = (cfg.batch_size if batch is None else batch) * int(np.prod(grid)) * (2 * c + 8 * cfg.readout.width) * 4
    size = max(1, int(cfg.bank_memory_gb * 2**30 // per_probe))
    if cfg.bank_size:
        size = min(size, cfg.bank_size)
    if cfg.bank_gflop and step_flops is not None:
        size = min(size, max(1, int(cfg.bank_gflop * 1e9 // max(step_flops, 1.0))))
    return size


def eval_batch(cfg: ProbeConfig, shape: Sequence[int], probes: int) -> int:
    """Clips per evaluation call of a bank of ``probes``: ``cfg.eval_batch_size``, fewer if the bank's stacked batch
    would pass ``cfg.bank_memory_gb``."""
    return min(cfg.eval_batch_size, max(1, bank_size(cfg, shape, cfg.eval_batch_size) * cfg.eval_batch_size // probes))
