"""Training a task's probes on cached frozen features, selecting on validation, scoring on test.

Every probe of a call (its cells x the config's learning rates x weight decays) trains in one vectorised
:class:`~diffprobe.readouts.bank.ProbeBank`, with AdamW, linear warm-up + cosine decay and per-probe gradient
clipping, each on its own stream of feature batches (its cell's features and seed). A cell reports the probe of its
grid with the best validation score on the task's primary metric (V-JEPA 2's protocol); test data never influences
training or selection. A bank too large for ``bank_memory_gb`` is split into several (selection waits for them all).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from diffprobe.errors import FileProblem
from diffprobe.features.cache import FeatureSet
from diffprobe.features.stream import StreamedFeatures
from diffprobe.readouts import Member, ProbeBank
from diffprobe.tasks.base import Task
from diffprobe.tasks.probe_config import ProbeConfig, bank_size, eval_batch
from diffprobe.tasks.targets import Targets
from diffprobe.train.optim import lr_at

POSTFIX_EVERY = 25  #: training steps between progress-bar loss updates


@dataclasses.dataclass
class ProbeResult:
    """Test metrics of a cell's validation-selected probe, with what selected it."""

    test: dict[str, float]  #: the task's metrics and ``<primary>_se``, the primary metric's standard error
    per_clip: np.ndarray  #: (N,) the primary metric of every test clip scored alone (NaN: nothing to score)
    val: list[dict[str, float]]  #: validation metrics of every grid probe's selected state (rates x decays order)
    chosen_lr: float
    chosen_weight_decay: float
    chosen_step: int  #: training steps of the reported probe's state
    final_losses: list[float]  #: each grid probe's training loss over the last steps


@dataclasses.dataclass(frozen=True)
class ProbeFeatures:
    """One cell of a bank: the cached features of its train / val / test roles and its probe seed (initialisation,
    batch order and query sampling)."""

    train: FeatureSet | StreamedFeatures
    val: FeatureSet | StreamedFeatures
    test: FeatureSet | StreamedFeatures
    seed: int


def _batch_targets(targets: Targets, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    idx = index.numpy()
    return {k: torch.from_numpy(v[idx]).to(device) for k, v in targets.items()}


def _train_batches(features: FeatureSet, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(index, features)`` batches of ``batch_size`` clips: each epoch visits the shards in a seeded random
    order and each shard's clips in a seeded random order; a batch that a shard cannot fill takes the next shard's
    first clips (so every batch is full, and no more than two shards are in memory)."""
    epoch = 0
    carry: list[tuple[torch.Tensor, torch.Tensor]] = []  # the part of a batch that the last shard began
    have = 0
    while True:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        for shard in torch.randperm(features.num_shards, generator=g).tolist():
            index, feats = features.load_shard(shard)
            order = torch.randperm(len(index), generator=g)
            lo = 0
            while lo < len(order):
                pick = order[lo:lo + batch_size - have]
                carry.append((index[pick], feats[pick]))
                have, lo = have + len(pick), lo + len(pick)
                if have == batch_size:
                    yield torch.cat([c[0] for c in carry]), torch.cat([c[1] for c in carry])
                    carry, have = [], 0
        epoch += 1


def _stack(parts: Sequence[torch.Tensor], pick: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One tensor per distinct input, ``pick (P,)`` naming each probe's -> ``(P, ...)`` in fp32 on ``device``
    (expanded, not copied, when every probe reads the same one)."""
    first = parts[0]
    dtype = torch.float32 if first.is_floating_point() else first.dtype
    if len(parts) == 1:
        return first.to(device, dtype).expand(len(pick), *first.shape)
    stacked = torch.stack(list(parts)).to(device, dtype)  # (U, ...)
    if len(parts) == len(pick) and bool((pick == torch.arange(len(pick))).all()):
        return stacked
    return stacked[pick.to(device)]


@torch.no_grad()
def predict_split(task: Task, bank: ProbeBank, features: Sequence[FeatureSet], targets: Targets, batch_size: int,
                  device: torch.device, rows: Sequence[int] | None = None) -> list[dict[str, np.ndarray]]:
    """Predictions of every probe of ``bank`` (or of ``rows``) on a whole split, one pass for all: ``features`` are
    each probe's feature set of the split (the same clips); each probe's predictions are stacked in clip order."""
    bank.eval()
    rows = list(range(len(bank))) if rows is None else list(rows)
    if len(features) != len(rows):
        raise ValueError(f"{len(features)} feature sets for {len(rows)} probes")
    unique = list({str(f.path): f for f in features}.values())
    pick = torch.tensor([[str(u.path) for u in unique].index(str(f.path)) for f in features])
    mismatch = f"{unique[0].path}: feature sets of one bank must hold the same clips in the same shards"
    if len({u.num_shards for u in unique}) > 1:
        raise FileProblem(mismatch)
    index_rows = torch.tensor(rows, device=device)
    parts: list[list[tuple[np.ndarray, dict[str, np.ndarray]]]] = [[] for _ in rows]
    for shards in zip(*(u.iter_shards() for u in unique), strict=True):
        index = shards[0][0]
        if any(not torch.equal(index, s[0]) for s in shards[1:]):
            raise FileProblem(mismatch)
        for lo in range(0, len(index), batch_size):
            idx = index[lo:lo + batch_size]
            tgt = _batch_targets(targets, idx, device)
            x = _stack([s[1][lo:lo + batch_size] for s in shards], pick, device)  # (R, b, T_f, H_f, W_f, C)
            out = bank(x, {k: v.expand(len(rows), *v.shape) for k, v in tgt.items()}, index_rows)  # (R, b, Q, o)
            for r in range(len(rows)):
                parts[r].append((idx.numpy(), task.predict(out[r], tgt)))
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
    """One cell (seed ``cfg.seed``) of :func:`train_probes`."""
    cell = ProbeFeatures(train[0], val[0], test[0], cfg.seed)
    return train_probes(task, cfg, [cell], (train[1], val[1], test[1]), device, progress, prior_of)[0]


def train_probes(task: Task, cfg: ProbeConfig, cells: Sequence[ProbeFeatures],
                 targets: tuple[Targets, Targets, Targets], device: torch.device, progress: bool = True,
                 prior_of: Callable[[Targets], np.ndarray | None] | None = None) -> list[ProbeResult]:
    """Train every cell's grid of probes (``cfg.readout``'s learning rates x weight decays) on its ``train``
    features, select each cell's best on ``val`` by the primary metric, report it on ``test``. The cells share the
    targets of the three roles (the same clips) and their features' shape; ``cfg.seed`` is not read (each cell has
    its own). ``prior_of`` computes the task's prior (as head output) from the training targets: ``task.baseline``
    unless given (the runner passes one that remembers it for the targets it keeps cached)."""
    if not cells:
        return []
    shape = cells[0].train.feature_shape
    for cell in cells:
        for feats, tgts in zip((cell.train, cell.val, cell.test), targets, strict=True):
            _check_sizes(tgts, feats)
            if feats.feature_shape != shape:
                raise ValueError(f"{feats.path}: features of shape {feats.feature_shape}, but the bank's are {shape}")
    prior = (prior_of or task.baseline)(targets[0])  # every probe starts at the task's prior (training targets only)
    baseline = None if prior is None else torch.from_numpy(prior)
    t_f, h_f, w_f, c = shape

    def bank(members: Sequence[Member]) -> ProbeBank:
        return ProbeBank(lambda: task.make_probe(cfg.readout, c, (t_f, h_f, w_f)).set_baseline(baseline), members,
                         task.query_inputs, task.loss).to(device)

    grid = [(lr, wd) for lr in cfg.readout.learning_rates for wd in cfg.readout.weight_decays]
    probes = [(i, Member(cell.seed, lr, wd, cfg.grad_clip)) for i, cell in enumerate(cells) for lr, wd in grid]
    # the GFLOP cap is counted on one probe's real step
    flops = _step_flops(task, cfg, bank([probes[0][1]]), cells[0], targets[0], device) if cfg.bank_gflop else None
    size = bank_size(cfg, shape, step_flops=flops)
    trained: list[_Trained] = []
    for lo in range(0, len(probes), size):  # one bank, unless it would pass cfg.bank_memory_gb or cfg.bank_gflop
        part = probes[lo:lo + size]
        trained += _train_bank(task, cfg, bank([m for _, m in part]), [cells[i] for i, _ in part], targets[:2],
                               device, progress)
    # each cell's best probe on validation (the first of its grid on a tie), then every chosen probe on test
    chosen = [max(range(i * len(grid), (i + 1) * len(grid)), key=lambda p: trained[p].score)
              for i in range(len(cells))]
    preds: list[dict[str, np.ndarray]] = []
    for lo in range(0, len(chosen), size):
        part = chosen[lo:lo + size]
        tester = bank([probes[p][1] for p in part])
        tester.restore([torch.stack(rows).to(device) for rows in zip(*(trained[p].state for p in part), strict=True)],
                       torch.ones(len(part), dtype=torch.bool, device=device))
        preds += predict_split(task, tester, [cells[probes[p][0]].test for p in part], targets[2],
                               eval_batch(cfg, shape, len(part)), device)
    results = []
    for i, (p, pred) in enumerate(zip(chosen, preds, strict=True)):
        test, per_clip = task.evaluate(pred, targets[2])
        mine = trained[i * len(grid):(i + 1) * len(grid)]
        results.append(ProbeResult(test=test, per_clip=per_clip, val=[t.val for t in mine],
                                   chosen_lr=probes[p][1].lr, chosen_weight_decay=probes[p][1].weight_decay,
                                   chosen_step=trained[p].step, final_losses=[t.final_loss for t in mine]))
    return results


@dataclasses.dataclass
class _Trained:
    """One probe after training: its best validation score (signed: higher is better), the step and metrics of that
    state, the state itself (its rows of the bank, on the CPU) and its final training loss."""

    score: float
    step: int
    val: dict[str, float]
    state: list[torch.Tensor]
    final_loss: float


def _step_flops(task: Task, cfg: ProbeConfig, bank: ProbeBank, cell: ProbeFeatures, targets: Targets,
                device: torch.device) -> float:
    """FLOPs of one training step of a one-probe ``bank`` on ``cell``'s first batch (a throwaway bank and stream)."""
    index, feats = next(_train_batches(cell.train, cfg.batch_size, cell.seed))
    tgt = task.training_batch(_batch_targets(targets, index, device), cfg.train_queries,
                              torch.Generator().manual_seed(cell.seed))
    with FlopCounterMode(display=False) as counter:
        bank.step(feats[None].to(device, torch.float32), {k: v[None] for k, v in tgt.items()})
    return float(counter.get_total_flops())


def _train_bank(task: Task, cfg: ProbeConfig, bank: ProbeBank, cells: Sequence[ProbeFeatures],
                targets: tuple[Targets, Targets], device: torch.device, progress: bool) -> list[_Trained]:
    """Train ``bank``, whose probe p reads ``cells[p]``'s features, on the train role, keeping each probe's best
    state on the val role; see :func:`train_probes`."""
    # one batch stream (and one query sampler) per distinct (features, seed): a probe sees what it would alone
    keys = list(dict.fromkeys((str(cell.train.path), cell.seed) for cell in cells))
    sources = {(str(cell.train.path), cell.seed): cell.train for cell in cells}
    streams = {k: _train_batches(sources[k], cfg.batch_size, k[1]) for k in keys}
    samplers = {k: torch.Generator().manual_seed(k[1]) for k in keys}
    pick = torch.tensor([keys.index((str(cell.train.path), cell.seed)) for cell in cells])  # (P,)
    recent: list[torch.Tensor] = []  # the last steps' losses, (P,) each, kept on the device (no sync per step)
    sign = 1.0 if task.higher_is_better else -1.0
    scores = np.full(len(cells), -np.inf)  # each probe's best validation score so far
    steps = np.zeros(len(cells), int)
    val_metrics: list[dict[str, float]] = [{} for _ in cells]
    best = bank.snapshot()
    clips = eval_batch(cfg, cells[0].train.feature_shape, len(cells))

    def validate(step: int) -> None:
        """Score every probe on validation; keep each one's best state so far (ties keep the later state)."""
        nonlocal best
        preds = predict_split(task, bank, [cell.val for cell in cells], targets[1], clips, device)
        better = np.zeros(len(cells), bool)
        for p, pred in enumerate(preds):
            m = task.metrics(pred, targets[1])
            score = sign * m[task.primary_metric] if np.isfinite(m[task.primary_metric]) else -np.inf
            if score >= scores[p]:
                better[p], scores[p], steps[p], val_metrics[p] = True, score, step, m
        best = bank.snapshot(into=best, rows=torch.from_numpy(better).to(device))

    desc = f"probe {task.name}" + (f" ({len(cells)} probes)" if len(cells) > 1 else "")
    bar = tqdm(range(cfg.steps), desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        bank.set_lr_scale(lr_at(step, base_lr=1.0, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                                min_lr_ratio=cfg.min_lr_ratio))
        feats, tgts = [], []
        for k in keys:
            index, f = next(streams[k])
            feats.append(f)
            tgts.append(task.training_batch(_batch_targets(targets[0], index, device), cfg.train_queries,
                                            samplers[k]))
        batch = {name: _stack([t[name] for t in tgts], pick, device) for name in tgts[0]}  # (P, B, ...) each
        losses = bank.step(_stack(feats, pick, device), batch)  # (P,)
        recent = (recent + [losses])[-20:]
        if progress and (step + 1) % POSTFIX_EVERY == 0:  # reading the loss waits for the device: not every step
            bar.set_postfix(loss=f"{losses.min().item():.4f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            validate(step + 1)
    validate(cfg.steps)
    final = np.mean(torch.stack(recent).cpu().double().numpy(), axis=0)  # (P,)
    return [_Trained(float(scores[p]), int(steps[p]), val_metrics[p], [b[p].cpu() for b in best], float(final[p]))
            for p in range(len(cells))]
