"""Before a study extracts anything: the features its remaining cells need, against the cache disk's free space
(each extraction also checks its own, but a study that would fill the disk halfway through its sweep is refused
before its first shard)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from diffprobe.backbones.registry import ResolvedBackbone
from diffprobe.backbones.shapes import forward_shapes
from diffprobe.data.splits import RoleData
from diffprobe.features.cache import FeatureCache, FeatureKey
from diffprobe.features.extract import FEATURE_DTYPE, check_disk, view_frames
from diffprobe.features.sources import feature_key
from diffprobe.spec import BackboneSpec
from diffprobe.study.config import StudyConfig
from diffprobe.study.plan import READOUT_ROLES, Job
from diffprobe.tasks import TASKS


def planned_features(cfg: StudyConfig, jobs: Sequence[Job], backbones: Mapping[BackboneSpec, ResolvedBackbone],
                     roles: Mapping[str, Mapping[str, RoleData]]) -> list[tuple[FeatureKey, tuple[int, ...], int]]:
    """``(cache key, per-clip shape (T_f, H_f, W_f, C), clips)`` of every feature set ``jobs`` read, each once; the
    shapes come from each backbone's forward on fake tensors (no compute), once per backbone and clip size."""
    shapes: dict[tuple, dict[int, tuple[int, ...]]] = {}
    out: dict[FeatureKey, tuple[FeatureKey, tuple[int, ...], int]] = {}
    for job in jobs:
        view, backbone = TASKS[job.task].view, backbones[job.spec].backbone
        for role in READOUT_ROLES[job.readout]:
            data = roles[job.task][role]
            frames = view_frames(view, data.dataset.frames)
            size = (job.spec, frames, data.dataset.height, data.dataset.width)
            if size not in shapes:
                shapes[size] = forward_shapes(backbone, *size[1:]).shapes
            key, num = feature_key(backbone, data.clips, view, job.t, job.noise_seed, limit=cfg.probe_clips[role])
            key = dataclasses.replace(key, block=job.block)
            out[key] = (key, shapes[size][job.block], num)
    return list(out.values())


def check_study_disk(cfg: StudyConfig, jobs: Sequence[Job], backbones: Mapping[BackboneSpec, ResolvedBackbone],
                     roles: Mapping[str, Mapping[str, RoleData]], cache: FeatureCache) -> None:
    """Refuse, in one line naming the needed and free GB, a study whose features still to extract (less what the
    cache holds) do not fit the cache's disk; a streamed study (``cfg.stream``) caches none."""
    if not cfg.stream:
        check_disk(cache, planned_features(cfg, jobs, backbones, roles), FEATURE_DTYPE)
