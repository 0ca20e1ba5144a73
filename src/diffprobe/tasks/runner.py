"""Running probe cells end to end: the clips of the task's train / val / test roles (from one dataset or three),
their features (extracted once, cached), their targets (computed once, cached per dataset, task and task version),
every cell's probes trained as vectorised banks (cells whose features have one shape share a bank) and selected, the
test metrics returned."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from diffprobe.backbones.base import Backbone
from diffprobe.data.dataset import ClipSequence
from diffprobe.data.splits import ROLES, RoleData
from diffprobe.features.cache import FeatureCache, FeatureSet
from diffprobe.features.sources import ensure_features, iter_clips
from diffprobe.features.stream import StreamedFeatures, stream_features
from diffprobe.tasks import TASKS, Task, make_task
from diffprobe.tasks.probing import ProbeConfig, ProbeFeatures, ProbeResult, train_probes
from diffprobe.tasks.roles import task_context
from diffprobe.tasks.targets import Targets, compute_targets, load_targets, save_targets


def _first(clips: ClipSequence, limit: int | None) -> int:
    return len(clips) if limit is None else min(limit, len(clips))


def targets_path(task: Task, clips: ClipSequence, cache: FeatureCache, limit: int | None = None) -> Path:
    """Where ``task``'s targets of the first ``limit`` clips (or all) are cached:
    ``cache/targets/<clips>/<task>-v<version>[-first<n>].safetensors``."""
    num = _first(clips, limit)
    slug = "".join(c if c.isalnum() or c in "._+-" else "-" for c in clips.name)
    suffix = "" if num == len(clips) else f"-first{num}"
    return cache.root / "targets" / slug / f"{task.name}-v{task.version}{suffix}.safetensors"


def ensure_targets(task: Task, clips: ClipSequence, cache: FeatureCache, limit: int | None = None,
                   progress: bool = True, workers: int = 0) -> Path:
    """``task``'s targets of the first ``limit`` clips (or all), computed once into :func:`targets_path`.

    The clips are read once for every task whose targets they lack and whose fields they have (each task still
    gets a file of its own), so a study that probes six tasks on a split decodes or renders it once."""
    path = targets_path(task, clips, cache, limit)
    if not path.is_file():
        num = _first(clips, limit)
        have = set(clips[0])
        others = [make_task(name, task.ctx) for name, cls in TASKS.items() if name != task.name
                  and set(cls.fields) <= have]
        todo = [task] + [t for t in others if not targets_path(t, clips, cache, limit).is_file()]
        batches = [list(range(i, min(num, i + 64))) for i in range(0, num, 64)]
        stream = (clip for batch in iter_clips(clips, batches, workers) for clip in batch)
        by_name = {t.name: t for t in todo}
        for name, targets in compute_targets(todo, stream, num, progress=progress).items():
            save_targets(targets_path(by_name[name], clips, cache, limit), {name: targets})
    return path


@functools.lru_cache(maxsize=16)
def _load_targets(path: str, task: str) -> Targets:
    """Targets read once per process (the study probes many cells on the same roles' clips)."""
    return load_targets(path, task)


_PRIORS: dict[str, np.ndarray | None] = {}  #: targets file -> its task's prior as head output


def _prior(path: str, task: Task, targets: Targets) -> np.ndarray | None:
    """``task.baseline(targets)`` computed once per process for the training targets in ``path`` (the file names
    the clips, the task and its version, so the prior is the same for every cell that trains on it)."""
    if path not in _PRIORS:
        _PRIORS[path] = task.baseline(targets)
    return _PRIORS[path]


@dataclasses.dataclass(frozen=True)
class CellRequest:
    """One probe cell of a task: whose features (backbone, block, noise level, noise seed, ensemble, token pooling)
    and its probe seed."""

    backbone: Backbone
    block: int
    t: float
    noise_seed: int
    seed: int
    ensemble: int = 1
    pool: str = ""  #: the grid the tokens are averaged to (``HxW`` / ``TxHxW``; "" for none)


def run_probes(cells: Sequence[CellRequest], roles: Mapping[str, RoleData], task_name: str, cfg: ProbeConfig,
               cache: FeatureCache, device: torch.device, limits: dict[str, int] | None = None,
               progress: bool = True, workers: int = 0, stream: bool = False) -> list[ProbeResult]:
    """Train and score ``task_name``'s probes of every cell (in order); ``limits`` caps the clips used from each role
    (the first N). Cells whose features have the same shape train in one vectorised bank (:func:`train_probes`);
    ``cfg.seed`` is not read (each cell has its own). The features come from the cache (extracted once, every block
    of a noise level in one pass), or with ``stream`` are computed as the probes read them
    (:mod:`~diffprobe.features.stream`: one forward serves every block of a noise level)."""
    task = make_task(task_name, task_context(roles))
    paths, targets = {}, {}
    for role in ROLES:
        limit = None if limits is None else limits[role]
        paths[role] = str(ensure_targets(task, roles[role].clips, cache, limit, progress, workers))
        targets[role] = _load_targets(paths[role], task.name)
    groups: dict[tuple, list[int]] = {}  # cells whose features one forward (or extraction) computes
    for i, cell in enumerate(cells):
        groups.setdefault((cell.backbone.identity, cell.t, cell.noise_seed, cell.ensemble, cell.pool), []).append(i)
    feats: dict[tuple[int, str], FeatureSet | StreamedFeatures] = {}  # (cell, role) -> its features
    for role in ROLES:
        limit = None if limits is None else limits[role]
        for which in groups.values():
            c = cells[which[0]]
            blocks = sorted({cells[i].block for i in which})
            get = stream_features if stream else ensure_features
            sets = get(c.backbone, roles[role].clips, task.view, blocks, c.t, c.noise_seed, cache, c.ensemble, limit,
                       progress=progress, workers=workers, pool=c.pool)
            feats.update({(i, role): sets[cells[i].block] for i in which})
    inputs = [ProbeFeatures(*(feats[i, role] for role in ROLES), cell.seed) for i, cell in enumerate(cells)]
    shapes = list(dict.fromkeys(f.train.feature_shape for f in inputs))
    results: dict[int, ProbeResult] = {}
    for shape in shapes:  # one bank (or several, see ProbeConfig.bank_memory_gb) per feature shape
        which = [i for i, f in enumerate(inputs) if f.train.feature_shape == shape]
        trained = train_probes(task, cfg, [inputs[i] for i in which], tuple(targets[r] for r in ROLES), device,
                               progress=progress, prior_of=lambda tgt: _prior(paths["train"], task, tgt))
        results.update(zip(which, trained, strict=True))
    return [results[i] for i in range(len(cells))]


def run_probe(backbone: Backbone, roles: Mapping[str, RoleData], task_name: str, block: int, t: float,
              noise_seed: int, cfg: ProbeConfig, cache: FeatureCache, device: torch.device, ensemble: int = 1,
              limits: dict[str, int] | None = None, progress: bool = True, workers: int = 0,
              pool: str = "", stream: bool = False) -> ProbeResult:
    """Train and score one cell of :func:`run_probes`, at probe seed ``cfg.seed``."""
    cell = CellRequest(backbone, block, t, noise_seed, cfg.seed, ensemble, pool)
    return run_probes([cell], roles, task_name, cfg, cache, device, limits, progress, workers, stream)[0]


def prior_metrics(roles: Mapping[str, RoleData], task_name: str, cache: FeatureCache,
                  limits: dict[str, int] | None = None, progress: bool = True
                  ) -> tuple[dict[str, float], np.ndarray]:
    """Test metrics of ``task_name``'s no-information baseline (:meth:`Task.prior`, from the training targets),
    and its per-clip primary metric."""
    task = make_task(task_name, task_context(roles))
    role_targets = {}
    for role in ("train", "test"):  # the prior needs no validation role
        limit = None if limits is None else limits[role]
        role_targets[role] = _load_targets(str(ensure_targets(task, roles[role].clips, cache, limit, progress)),
                                           task.name)
    return task.evaluate(task.prior(role_targets["train"], role_targets["test"]), role_targets["test"])
