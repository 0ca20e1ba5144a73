"""The study's analyses past the trained probes, run by rank 0 after them:

- the training-free matcher's point-tracking cells (:func:`~diffprobe.study.plan.plan_matches`), stored in the
  study's results store beside the trained probes' (a matcher cell's config hash is the matcher's);
- the motion experiment (the paper's Figure 4) of every backbone at its headline, one folder per backbone and
  config under ``RUN/motion/``.

Both resume: a stored cell or a finished motion folder of the same config is not recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from diffprobe.backbones.registry import load_backbone
from diffprobe.data.splits import resolve_roles
from diffprobe.features.cache import FeatureCache
from diffprobe.features.sources import ensure_features, identity_for
from diffprobe.study.config import StudyConfig
from diffprobe.study.disk import check_study_disk
from diffprobe.study.motion import held_config, run_motion
from diffprobe.study.plan import (
    MATCH,
    READOUT_ROLES,
    expand_spec,
    motion_config,
    motion_dir,
    plan_matches,
    study_cell,
)
from diffprobe.study.store import ResultsStore
from diffprobe.tasks import TASKS
from diffprobe.tasks.matching import TASK, feature_clips, run_match
from diffprobe.tasks.roles import data_identity, task_context, task_roles

#: how the study times a stage: ``timed(name, fn)`` runs ``fn`` and adds its wall time to ``name``
Timed = Callable[[str, Callable[[], Any]], Any]


def run_matches(cfg: StudyConfig, run_dir: Path, cache: FeatureCache, device: torch.device, timed: Timed,
                progress: bool) -> None:
    """Every matcher cell of the plan that the store lacks: the features of each (backbone, t, noise seed) are
    extracted for all its blocks in one pass per role first (unless ``cfg.stream``), then each cell is matched."""
    jobs = plan_matches(cfg, run_dir)
    if not jobs:
        return
    backbones = {spec: load_backbone(spec, device) for spec in dict.fromkeys(j.spec for j in jobs)}
    roles = task_roles(TASK, cfg.roles(TASK))
    view, frames = TASKS[TASK].view, task_context(roles).frames
    sources = {role: feature_clips(roles[role].clips, cfg.match_grid, frames) for role in READOUT_ROLES[MATCH]}
    cells = [study_cell(cfg, j, backbones[j.spec], data_identity(roles),
                        identity_for(backbones[j.spec].backbone, sources["test"][0], view)) for j in jobs]
    with ResultsStore(run_dir / "results.sqlite") as store:
        todo = [(j, c) for j, c in zip(jobs, cells, strict=True) if not store.has(c)]
        check_study_disk(cfg, [j for j, _ in todo], backbones, {TASK: roles}, cache)
        if not cfg.stream:  # one forward per (backbone, t, noise seed) and role serves the block sweep
            groups: dict[tuple, set[int]] = {}
            for job, _ in todo:
                groups.setdefault((job.spec, job.t, job.noise_seed), set()).add(job.block)
            for (spec, t, seed), blocks in groups.items():
                for role, (clips, count) in sources.items():
                    def extract(spec=spec, t=t, seed=seed, blocks=blocks, clips=clips, n=count * cfg.probe_clips[role]):
                        return ensure_features(backbones[spec].backbone, clips, view, sorted(blocks), t, seed, cache,
                                               limit=n, progress=False)

                    timed("match", extract)
        for job, cell in tqdm(todo, desc="match", unit="cell", disable=not progress, dynamic_ncols=True):
            out = timed("match", lambda job=job: run_match(
                backbones[job.spec].backbone, roles, [job.block], job.t, [job.noise_seed], cfg.match_grid, cache,
                limits=cfg.probe_clips, progress=False, stream=cfg.stream))
            store.add(cell, out.metrics, out.per_clip, data_specs=cfg.roles(TASK))
        store.export_csv(run_dir / "results.csv")


def run_motions(cfg: StudyConfig, run_dir: Path, device: torch.device, timed: Timed, progress: bool) -> None:
    """The motion experiment of every backbone of the study at its headline (none with ``cfg.motion_clips`` 0),
    each into :func:`~diffprobe.study.plan.motion_dir`; a folder already holding its config is kept."""
    if not cfg.motion_clips:
        return
    role = resolve_roles({"test": cfg.dataset})["test"]
    todo = [name for name in cfg.backbones
            if held_config(motion_dir(run_dir, name, motion_config(cfg, name))) != motion_config(cfg, name).to_dict()]
    for name in tqdm(todo, desc="motion", unit="backbone", disable=not progress, dynamic_ncols=True):
        config = motion_config(cfg, name)
        resolved = load_backbone(expand_spec(config.backbone, run_dir), device)
        timed("motion", lambda resolved=resolved, config=config, name=name: run_motion(
            resolved, role, config, motion_dir(run_dir, name, config), echo=lambda line: None))
