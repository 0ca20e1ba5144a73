"""Running one probe cell end to end: features of the three splits (extracted once, cached), targets (computed
once, cached), the probe bank trained and selected, the test metrics returned."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from diffprobe.backbones.base import Backbone
from diffprobe.data import CATEGORIES, MOTIONS, ProbeWorld, ProbeWorldConfig
from diffprobe.features.cache import FeatureCache
from diffprobe.features.sources import ensure_features, world_identity
from diffprobe.tasks import TASKS, TaskContext, make_task
from diffprobe.tasks.probing import ProbeConfig, ProbeResult, train_probe
from diffprobe.tasks.targets import Targets, compute_targets, load_targets, save_targets

SPLITS = ("train", "val", "test")


def task_context(world: ProbeWorldConfig) -> TaskContext:
    """The task context of a Probe World config."""
    return TaskContext(frames=world.frames, height=world.height, width=world.width, num_categories=len(CATEGORIES),
                       num_motions=len(MOTIONS), max_objects=world.max_objects)


def ensure_targets(world: ProbeWorldConfig, split: str, cache: FeatureCache, progress: bool = True) -> Path:
    """Every task's targets of ``split``, computed once into ``cache/targets/<world>/<split>.safetensors``."""
    path = cache.root / "targets" / world_identity(world) / f"{split}.safetensors"
    if not path.is_file():
        ctx = task_context(world)
        data = ProbeWorld(world, split)
        chunk: dict[int, dict] = {}

        def load(i: int) -> dict:  # render 64 clips at a time (the vectorised path), hand them out one by one
            if i not in chunk:
                chunk.clear()
                ids = list(range(i, min(len(data), i + 64)))
                chunk.update(zip(ids, data.batch(ids), strict=True))
            return chunk[i]

        save_targets(path, compute_targets([make_task(n, ctx) for n in TASKS], load, len(data), progress=progress))
    return path


@functools.lru_cache(maxsize=8)
def _load_targets(path: str, task: str) -> Targets:
    """Targets read once per process (the study probes many cells on the same splits)."""
    return load_targets(path, task)


def run_probe(backbone: Backbone, world: ProbeWorldConfig, task_name: str, block: int, t: float, noise_seed: int,
              cfg: ProbeConfig, cache: FeatureCache, device: torch.device, ensemble: int = 1,
              limits: dict[str, int] | None = None, progress: bool = True) -> ProbeResult:
    """Train and score ``task_name``'s probe on ``backbone``'s features at (block, t, noise seed); ``limits`` caps
    the clips used from each split (the first N)."""
    task = make_task(task_name, task_context(world))
    data = {}
    for split in SPLITS:
        limit = None if limits is None else limits[split]
        feats = ensure_features(backbone, world, split, task.view, [block], t, noise_seed, cache, ensemble, limit,
                                progress=progress)[block]
        targets = _load_targets(str(ensure_targets(world, split, cache, progress)), task.name)
        data[split] = (feats, {k: v[:len(feats)] for k, v in targets.items()})
    return train_probe(task, cfg, data["train"], data["val"], data["test"], device, progress=progress)


def prior_metrics(world: ProbeWorldConfig, task_name: str, cache: FeatureCache, limits: dict[str, int] | None = None,
                  progress: bool = True) -> dict[str, float]:
    """Test metrics of ``task_name``'s no-information baseline (:meth:`Task.prior`, from the training targets)."""
    task = make_task(task_name, task_context(world))
    split_targets = {}
    for split in ("train", "test"):
        targets = _load_targets(str(ensure_targets(world, split, cache, progress)), task.name)
        n = None if limits is None else limits[split]
        split_targets[split] = {k: v[:n] for k, v in targets.items()}
    return task.metrics_with_se(task.prior(split_targets["train"], split_targets["test"]), split_targets["test"])
