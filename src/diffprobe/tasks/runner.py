"""Running one probe cell end to end: features of the three splits (extracted once, cached), targets (computed
once, cached), the probe bank trained and selected, the test metrics returned."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from diffprobe.backbones.base import Backbone
from diffprobe.data import CATEGORIES, MOTIONS, ProbeWorld, ProbeWorldConfig
from diffprobe.features.cache import FeatureCache, FeatureKey, FeatureSet
from diffprobe.features.extract import extract_features
from diffprobe.features.sources import ensure_videos, world_identity
from diffprobe.tasks import TASKS, TaskContext, make_task
from diffprobe.tasks.probing import ProbeConfig, ProbeResult, train_probe
from diffprobe.tasks.targets import compute_targets, load_targets, save_targets

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


def ensure_features(backbone: Backbone, world: ProbeWorldConfig, split: str, view: str, blocks: Sequence[int],
                    t: float, noise_seed: int, cache: FeatureCache, ensemble: int = 1, batch_size: int = 32,
                    progress: bool = True) -> dict[int, FeatureSet]:
    """``backbone``'s features of one split at every block, extracted once into the cache."""
    key = FeatureKey(backbone.identity, world_identity(world), split, view, 0, float(t), noise_seed, ensemble)
    keys = [dataclasses.replace(key, block=b) for b in blocks]
    if not all(cache.is_complete(k) for k in keys):
        videos = ensure_videos(world, split, cache, progress=progress)
        extract_features(backbone, lambda ids: videos.take(ids).numpy(), len(videos), key, blocks, cache,
                         batch_size=batch_size, progress=progress)
    return {k.block: cache.open(k) for k in keys}


def run_probe(backbone: Backbone, world: ProbeWorldConfig, task_name: str, block: int, t: float, noise_seed: int,
              cfg: ProbeConfig, cache: FeatureCache, device: torch.device, ensemble: int = 1,
              progress: bool = True) -> ProbeResult:
    """Train and score ``task_name``'s probe on ``backbone``'s features at (block, t, noise seed)."""
    task = make_task(task_name, task_context(world))
    data = {}
    for split in SPLITS:
        feats = ensure_features(backbone, world, split, task.view, [block], t, noise_seed, cache, ensemble,
                                progress=progress)[block]
        data[split] = (feats, load_targets(ensure_targets(world, split, cache, progress), task.name))
    return train_probe(task, cfg, data["train"], data["val"], data["test"], device, progress=progress)
