"""Training a task's probes on cached frozen features, selecting on validation, scoring on test.

Several probes (one per learning rate, :class:`~diffprobe.readouts.ProbeBank`) train on the same stream of feature
batches with AdamW, linear warm-up + cosine decay and per-probe gradient clipping. The probe with the best
validation score on the task's primary metric is the one whose test metrics are reported; test data never
influences training or selection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from diffprobe.config import Config, ConfigError
from diffprobe.errors import FileProblem
from diffprobe.features.cache import FeatureSet
from diffprobe.readouts import ProbeBank, ReadoutConfig
from diffprobe.tasks.base import Task
from diffprobe.tasks.targets import Targets
from diffprobe.train.optim import lr_at

POSTFIX_EVERY = 25  #: training steps between progress-bar loss updates


@dataclasses.dataclass(frozen=True)
class ProbeConfig(Config):
    """How every probe is trained (the readout's size and learning rates live in ``readout``)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU-sized: one learning rate, about 6 epochs of 2k clips; validation every 100 steps keeps each probe's
        # best state (tiny probes overfit trained-WALT features within a few hundred steps).
        "tiny": {"readout": {**ReadoutConfig.PRESETS["tiny"], "learning_rates": [2e-3]}, "steps": 400,
                 "batch_size": 32, "warmup_steps": 20, "eval_every": 100},
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

    def validate(self) -> None:
        if self.train_queries < 0:
            raise ConfigError(f"ProbeConfig.train_queries: must be >= 0, got {self.train_queries}")
        for name in ("steps", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ProbeConfig.{name}: must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ConfigError(f"ProbeConfig.eval_every: must be >= 0, got {self.eval_every}")


@dataclasses.dataclass
class ProbeResult:
    """Test metrics of the validation-selected probe, with what selected it."""

    test: dict[str, float]  #: the task's metrics and ``<primary>_se``, the primary metric's standard error
    per_clip: np.ndarray  #: (N,) the primary metric of every test clip scored alone (NaN: nothing to score)
    val: list[dict[str, float]]  #: validation metrics of every probe's selected state, in learning-rate order
    chosen_lr: float
    chosen_step: int  #: training steps of the reported probe's state
    final_losses: list[float]  #: each probe's training loss over the last steps


def _batch_targets(targets: Targets, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    idx = index.numpy()
    return {k: torch.from_numpy(v[idx]).to(device) for k, v in targets.items()}


def _train_batches(features: FeatureSet, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(index, features)`` batches: each epoch visits the shards in a seeded random order and each shard's
    clips in a seeded random order, so no more than one shard is in memory."""
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        for shard in torch.randperm(features.num_shards, generator=g).tolist():
            index, feats = features.load_shard(shard)
            order = torch.randperm(len(index), generator=g)
            for lo in range(0, len(order), batch_size):
                pick = order[lo:lo + batch_size]
                yield index[pick], feats[pick]
        epoch += 1


@torch.no_grad()
def predict_split(task: Task, bank: ProbeBank, features: FeatureSet, targets: Targets, batch_size: int,
                  device: torch.device, only: int | None = None) -> list[dict[str, np.ndarray]]:
    """Every probe's predictions on a whole split (or just probe ``only``'s), stacked in clip-index order."""
    bank.eval()
    probes = list(bank.probes) if only is None else [bank.probes[only]]
    parts: list[list[tuple[np.ndarray, dict[str, np.ndarray]]]] = [[] for _ in probes]
    for index, feats in features.iter_shards():
        for lo in range(0, len(index), batch_size):
            idx = index[lo:lo + batch_size]
            tgt = _batch_targets(targets, idx, device)
            x = feats[lo:lo + batch_size].to(device, torch.float32)
            for p, probe in enumerate(probes):
                parts[p].append((idx.numpy(), task.predict(probe(x, *task.query_inputs(tgt)), tgt)))
    preds = []
    for chunks in parts:
        order = np.argsort(np.concatenate([c[0] for c in chunks]))
        preds.append({k: np.concatenate([c[1][k] for c in chunks])[order] for k in chunks[0][1]})
    return preds


def _check_sizes(targets: Targets, features: FeatureSet) -> Targets:
    if len(features) != len(next(iter(targets.values()))):
        raise FileProblem(f"{features.path}: {len(features)} clips of features but "
                         f"{len(next(iter(targets.values())))} clips of targets")
    return targets


def train_probe(task: Task, cfg: ProbeConfig, train: tuple[FeatureSet, Targets], val: tuple[FeatureSet, Targets],
                test: tuple[FeatureSet, Targets], device: torch.device, progress: bool = True,
                prior_of: Callable[[Targets], np.ndarray | None] | None = None) -> ProbeResult:
    """Train ``task``'s probe bank on ``train``, select on ``val`` by the primary metric, report ``test``.
    ``prior_of`` computes the task's prior (as head output) from the training targets: ``task.baseline`` unless
    given (the runner passes one that remembers it for the targets it keeps cached)."""
    for feats, tgts in (train, val, test):
        _check_sizes(tgts, feats)
    torch.manual_seed(cfg.seed)
    t_f, h_f, w_f, c = train[0].feature_shape
    prior = (prior_of or task.baseline)(train[1])  # every probe starts at the task's prior (training targets only)
    baseline = None if prior is None else torch.from_numpy(prior)
    bank = ProbeBank.from_config(
        cfg.readout, lambda: task.make_probe(cfg.readout, c, (t_f, h_f, w_f)).set_baseline(baseline)).to(device)
    batches = _train_batches(train[0], cfg.batch_size, cfg.seed)
    query_gen = torch.Generator().manual_seed(cfg.seed)
    recent: list[torch.Tensor] = []  # the last steps' losses, (P,) each, kept on the device (no sync per step)
    sign = 1.0 if task.higher_is_better else -1.0
    best: list[tuple[float, int, dict[str, float], dict[str, torch.Tensor]]] = []  # per probe: score, step, val, state

    def validate(step: int) -> None:
        """Score every probe on validation; keep each one's best state so far (ties keep the later state)."""
        for p, m in enumerate(predict_split(task, bank, *val, cfg.eval_batch_size, device)):
            m = task.metrics(m, val[1])
            score = sign * m[task.primary_metric] if np.isfinite(m[task.primary_metric]) else -np.inf
            if p == len(best) or score >= best[p][0]:
                state = {k: v.detach().clone() for k, v in bank.probes[p].state_dict().items()}
                if p == len(best):
                    best.append((score, step, m, state))
                else:
                    best[p] = (score, step, m, state)

    bar = tqdm(range(cfg.steps), desc=f"probe {task.name}", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        bank.set_lr_scale(lr_at(step, base_lr=1.0, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                                min_lr_ratio=cfg.min_lr_ratio))
        index, feats = next(batches)
        tgt = task.training_batch(_batch_targets(train[1], index, device), cfg.train_queries, query_gen)
        losses = bank.step(lambda out, tgt=tgt: task.loss(out, tgt), feats.to(device, torch.float32),
                           *task.query_inputs(tgt), grad_clip=cfg.grad_clip)
        recent = (recent + [losses])[-20:]
        if progress and (step + 1) % POSTFIX_EVERY == 0:  # reading the loss waits for the device: not every step
            bar.set_postfix(loss=f"{losses.min().item():.4f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            validate(step + 1)
    validate(cfg.steps)
    chosen, _ = bank.best([b[0] for b in best])
    _, step, _, state = best[chosen]
    bank.probes[chosen].load_state_dict(state)
    test_preds = predict_split(task, bank, *test, cfg.eval_batch_size, device, only=chosen)[0]
    scores, per_clip = task.evaluate(test_preds, test[1])
    return ProbeResult(test=scores, per_clip=per_clip, val=[b[2] for b in best],
                       chosen_lr=bank.learning_rates[chosen], chosen_step=step,
                       final_losses=np.mean(torch.stack(recent).cpu().double().numpy(), axis=0).tolist())
