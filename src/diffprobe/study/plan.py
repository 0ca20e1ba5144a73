"""The study's plan: every probe and matcher cell its config asks for (a :class:`Job`), where its own runs live,
and which stored rows belong to it. Pure bookkeeping: nothing here trains or extracts, so the report and the
estimate read the plan without the trainers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffprobe.backbones.registry import ResolvedBackbone
from diffprobe.data.splits import ROLES
from diffprobe.spec import BackboneSpec
from diffprobe.study.config import MAIN, TOKENIZER, TWIN_IMAGE, TWIN_VIDEO, StudyConfig
from diffprobe.study.formatting import safe_name
from diffprobe.study.motion import MotionConfig
from diffprobe.study.report_tasks import PRIOR, UNBLOCKED
from diffprobe.study.store import Cell, clips_key, match_config_hash
from diffprobe.tasks import TASKS
from diffprobe.tasks.roles import MATCH_ROLES, MATCH_TASK, data_identity, task_roles

MODES = ("video", "image")
PROBE, MATCH = "probe", "match"  #: a cell's readout: a trained probe, or the training-free matcher
#: the roles each readout reads (the matcher trains nothing)
READOUT_ROLES: dict[str, tuple[str, ...]] = {PROBE: ROLES, MATCH: MATCH_ROLES}


@dataclasses.dataclass(frozen=True)
class Job:
    """One probe cell of the study."""

    backbone: str  #: name in the results store (walt-video, walt-image, walt-untrained, latents, walt-video@S)
    spec: BackboneSpec  #: the backbone, its paths the study's run directories
    block: int
    t: float
    task: str
    noise_seed: int
    probe_seed: int
    step: int  #: checkpoint step of the weights (the study's twins: twin.train.steps; controls, external: 0)
    size: str = MAIN  #: the model size whose run directories the spec reads (the study's twins; MAIN otherwise)
    readout: str = PROBE  #: PROBE or MATCH (then the task is point tracking and probe_seed 0)


def twin_dir(run_dir: Path, size: str, mode: str) -> Path:
    """The run directory of the study's twin of one size and mode."""
    return run_dir / "twins" / f"{size}-{mode}"


def twin_dirs(cfg: StudyConfig, run_dir: Path) -> dict[tuple[str, str], Path]:
    """(size name, mode) -> run directory of every twin the study trains."""
    return {(s, m): twin_dir(run_dir, s, m) for s in (MAIN, *cfg.sizes) for m in MODES}


def expand_spec(spec: str | BackboneSpec, run_dir: Path, size: str = MAIN) -> BackboneSpec:
    """A backbone spec whose path is one of the study's placeholders, with it replaced by its run directory."""
    parsed = BackboneSpec.parse(spec)
    dirs = {TWIN_VIDEO: twin_dir(run_dir, size, "video"), TWIN_IMAGE: twin_dir(run_dir, size, "image"),
            TOKENIZER: run_dir / "tokenizer"}
    return parsed.with_path(str(dirs[parsed.path])) if parsed.path in dirs else parsed


def final_step(cfg: StudyConfig, spec: str | BackboneSpec) -> int:
    """The checkpoint step a spec's weights are at, without loading it: ``walt:RUN@step=STEP`` at STEP, the study's
    trained twins at ``twin.train.steps``, everything else (controls, external models) at 0."""
    parsed = BackboneSpec.parse(spec)
    if parsed.kind != "walt":
        return 0
    step = parsed.option_dict().get("step")  # absent: the exported weights
    if step is not None:
        return int(step)
    return cfg.twin.train.steps if parsed.path in (TWIN_VIDEO, TWIN_IMAGE) else 0


def plan_jobs(cfg: StudyConfig, run_dir: Path) -> list[Job]:
    """Every probe cell of the study, headline cells first, in a stable order."""
    jobs: list[Job] = []

    def add(name: str, spec: BackboneSpec, block: int, t: float, tasks: tuple[str, ...], seeds: tuple[int, ...],
            size: str = MAIN) -> None:
        for task in tasks:
            for ns in cfg.noise_seeds:
                for ps in seeds:
                    jobs.append(Job(name, expand_spec(spec, run_dir, size), block, t, task, ns, ps,
                                    final_step(cfg, spec), size))

    specs = {name: BackboneSpec.parse(spec) for name, spec in cfg.backbones.items()}
    for name, spec in specs.items():  # the headline cells: every probe seed
        add(name, spec, *cfg.headline_of(name), cfg.tasks, cfg.probe_seeds)
    first = cfg.probe_seeds[:1]  # the sweeps and analyses: the first probe seed
    for name in cfg.reference:
        spec = specs[name]
        block, t = cfg.headline_of(name)
        for nt in cfg.noise_sweep:
            add(name, spec, block, nt, cfg.sweep_tasks, first)
        for nb in cfg.block_sweep:
            add(name, spec, nb, t, cfg.sweep_tasks, first)
        for step in cfg.budget_steps:  # own twins only (validated)
            add(name, spec.with_options(step=step), block, t, cfg.sweep_tasks, first)
        for size in cfg.sizes:  # the same twin spec, in the size's run directories
            add(f"{name}@{size}", spec, block, t, cfg.sweep_tasks, first, size)
    return list(dict.fromkeys(jobs))  # the sweeps cross at the headline cell: keep each cell once


def plan_matches(cfg: StudyConfig, run_dir: Path) -> list[Job]:
    """Every matcher cell of the study (none without ``cfg.match``): each backbone's headline cell and the reference
    pair's noise and block sweeps, once per noise seed, in a stable order."""
    if not cfg.match:
        return []
    jobs: list[Job] = []

    def add(name: str, block: int, t: float) -> None:
        spec = cfg.backbone_spec(name)
        jobs.extend(Job(name, expand_spec(spec, run_dir), block, t, MATCH_TASK, ns, 0, final_step(cfg, spec),
                        readout=MATCH) for ns in cfg.noise_seeds)

    for name in cfg.backbones:
        add(name, *cfg.headline_of(name))
    for name in cfg.reference:
        block, t = cfg.headline_of(name)
        for nt in cfg.noise_sweep:
            add(name, block, nt)
        for nb in cfg.block_sweep:
            add(name, nb, t)
    return list(dict.fromkeys(jobs))


def planned_cells(cfg: StudyConfig, run_dir: Path) -> set[tuple[str, int, int, float, str]]:
    """(backbone, checkpoint step, block, t, task) of every cell of the study's plan (probes and matcher), each
    task's prior included: what a report of this plan shows (a store may hold more, from a larger plan run before)."""
    cells = {(j.backbone, j.step, j.block, j.t, j.task) for j in plan_jobs(cfg, run_dir) + plan_matches(cfg, run_dir)}
    return cells | {(PRIOR, 0, *UNBLOCKED, task) for task in cfg.tasks}


def extraction_group(cfg: StudyConfig, job: Job) -> tuple[Any, ...]:
    """The cells that one extraction serves: same backbone, t, noise seed, view and clips (any block)."""
    return job.spec, job.t, job.noise_seed, TASKS[job.task].view, tuple(sorted(cfg.roles(job.task).items()))


def bank_groups(cfg: StudyConfig, jobs: Sequence[Job], world_size: int = 1) -> list[list[int]]:
    """The indices of ``jobs`` grouped into the probe banks the study trains: every cell of a task on the same
    clips (every backbone, block, noise level and seed: :func:`~diffprobe.tasks.runner.run_probes` splits them by
    feature shape and memory), each group then cut into ``world_size`` near-equal parts for the ranks to share."""
    by_task: dict[tuple[str, tuple[tuple[str, str], ...]], list[int]] = {}
    for i, job in enumerate(jobs):
        by_task.setdefault((job.task, tuple(sorted(cfg.roles(job.task).items()))), []).append(i)
    groups = []
    for ids in by_task.values():
        parts = min(world_size, len(ids))
        groups += [ids[r::parts] for r in range(parts)]
    return groups


def study_cell(cfg: StudyConfig, job: Job, rb: ResolvedBackbone, dataset: str, identity: str) -> Cell:
    """The results-store key of a study job: everything that changes its number (``identity``: the backbone's for
    the job's clips, :func:`~diffprobe.features.sources.identity_for`); a matcher job's config hash is the
    matcher's."""
    config_hash = (match_config_hash([job.block], cfg.match_grid) if job.readout == MATCH
                   else cfg.probe.replace(seed=0).hash())
    return Cell(cfg.name, job.backbone, identity, rb.mode, rb.step, job.block, job.t, job.noise_seed, 1,
                job.task, dataset, clips_key(cfg.probe_clips), job.probe_seed, config_hash)


def motion_config(cfg: StudyConfig, name: str) -> MotionConfig:
    """The motion experiment of backbone ``name`` in the study: at its headline, the first noise seed, the first
    ``cfg.motion_clips`` test clips of the study's dataset."""
    block, t = cfg.headline_of(name)
    return MotionConfig(cfg.backbones[name], cfg.dataset, block, t, cfg.noise_seeds[0], cfg.motion_clips)


def motion_dir(run_dir: Path, name: str, config: MotionConfig) -> Path:
    """Where the study keeps one backbone's motion run: a folder per backbone and config, so a changed plan adds a
    folder and never overwrites one."""
    return run_dir / "motion" / f"{safe_name(name)}-{config.hash(8)}"


def prior_cell(cfg: StudyConfig, task: str, dataset: str) -> Cell:
    """The results-store key of a task's no-information prior on the clips ``dataset`` names."""
    return Cell(cfg.name, PRIOR, PRIOR, "none", 0, *UNBLOCKED, 0, 1, task, dataset, clips_key(cfg.probe_clips), 0,
                cfg.probe.hash())


def current_cells(cfg: StudyConfig) -> dict[str, dict[str, Any]]:
    """task -> the cell columns every headline row of this study's config has on that task (its datasets' identity and
    clip counts), so a table never averages in rows of an earlier config of the same study (other data, other
    probe settings)."""
    return {task: {"dataset": data_identity(task_roles(task, cfg.roles(task))), "clips": clips_key(cfg.probe_clips)}
            for task in cfg.tasks}


def is_current(row: Mapping[str, Any], cfg: StudyConfig, current: dict[str, dict[str, Any]]) -> bool:
    """Whether a stored row belongs to this config's headline cells (see :func:`current_cells`)."""
    want = current[row["task"]]
    hashes = {cfg.probe.hash()} if row["backbone"] == PRIOR else {cfg.probe.replace(seed=0).hash()}
    return row["dataset"] == want["dataset"] and row["clips"] == want["clips"] and row["config_hash"] in hashes
