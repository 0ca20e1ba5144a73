"""`diffprobe study`: the whole image-vs-video study, resumable stage by stage and cell by cell.

Run directory::

    RUN/study_config.json            the StudyConfig (a different config in the same RUN is an error)
    RUN/tokenizer/  RUN/feature_net/  RUN/twins/<size>-<mode>/     training runs (resumable)
    RUN/cache/                       rendered clips, latents, features, targets (resumable shards)
    RUN/results.sqlite  results.csv  every probe result (a cell already stored is never recomputed)
    RUN/generation.json              Fréchet distances of samples of every twin / checkpoint
    RUN/pca/clip-*.npz               frames + tokens of a few test clips for the PCA figures
    RUN/timings.json                 wall time of each stage of the last run
    RUN/report/report.html           written by `diffprobe report RUN`

Under torchrun every rank runs :func:`run_study`: the training stages train with DDP, the probe stage shares its
extractions and cells across the ranks (see :func:`_run_probes`), generation and PCA run on rank 0 alone, and every
rank ends at a barrier. Rank 0 alone writes the run directory's files (the cache's shards aside).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffprobe.backbones.registry import ResolvedBackbone, load_backbone, parse_backbone_spec
from diffprobe.config import ConfigError, dict_changes
from diffprobe.data.splits import ROLES, RoleData, resolve_roles
from diffprobe.features.cache import FeatureCache
from diffprobe.features.sources import ensure_features, ensure_videos
from diffprobe.metrics import paired_difference
from diffprobe.models.exports import META_FILE, load_tokenizer
from diffprobe.study.config import TOKENIZER, TWIN_IMAGE, TWIN_VIDEO, StudyConfig
from diffprobe.study.report_tasks import (
    HIGHER_IS_BETTER,
    PRIOR,
    TASK_METRICS,
    UNTRAINED,
    control_legend,
    margin_z,
    relative_percent,
)
from diffprobe.study.store import Cell, ResultsStore, clips_key
from diffprobe.tasks import TASKS, make_task
from diffprobe.tasks.runner import (
    CellRequest,
    data_identity,
    ensure_targets,
    prior_metrics,
    run_probes,
    targets_path,
    task_context,
    task_roles,
)
from diffprobe.train.denoiser import train_denoiser
from diffprobe.train.feature_net import FrechetEvaluator, load_feature_net, train_feature_net
from diffprobe.train.sample import generate
from diffprobe.train.tokenizer import train_tokenizer
from diffprobe.utils.distributed import (
    DistContext,
    broadcast_object,
    gather_objects,
    rank_share,
    setup_distributed,
    wait_for_all,
)
from diffprobe.utils.io import atomic_path, atomic_write_json, read_json
from diffprobe.utils.lock import folder_lock

MAIN = "main"  #: size name of the headline twins


@dataclasses.dataclass(frozen=True)
class Job:
    """One probe cell of the study."""

    backbone: str  #: name in the results store (walt-video, walt-image, walt-untrained, latents, walt-video@S)
    spec: str  #: backbone spec for diffprobe.backbones.registry
    block: int
    t: float
    task: str
    noise_seed: int
    probe_seed: int
    step: int  #: checkpoint step of the weights (the study's twins: twin.train.steps; controls, external: 0)


def _exported(run_dir: Path, config: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds a finished export of exactly this run config."""
    meta = run_dir / META_FILE
    return meta.is_file() and read_json(meta)["config"] == config


class Timings:
    """Wall time per stage, saved to ``timings.json`` after every stage (so a killed run keeps what it measured);
    a resumed run adds to the times already recorded there. Under torchrun only rank 0's times are saved
    (``enabled`` on rank 0 alone)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.seconds: dict[str, float] = read_json(path) if path.is_file() else {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)
        self.save()
        return out

    def save(self) -> None:
        if self.enabled:
            atomic_write_json(self.path, self.seconds)


def _announce(number: int, total: int, name: str, start: float, show: bool) -> None:
    """One line per stage, ``study [k/n] +MM:SS name``, so a user sees how far the study is."""
    if show:
        minutes, seconds = divmod(int(time.perf_counter() - start), 60)
        tqdm.write(f"study [{number}/{total}] +{minutes:02d}:{seconds:02d} {name}", file=sys.stderr)


def twin_dirs(cfg: StudyConfig, run_dir: Path) -> dict[tuple[str, str], Path]:
    """(size name, mode) -> run directory of every twin the study trains."""
    sizes = [MAIN, *cfg.sizes]
    return {(s, m): run_dir / "twins" / f"{s}-{m}" for s in sizes for m in ("video", "image")}


def _twin_config(cfg: StudyConfig, run_dir: Path, size: str, mode: str):
    model = cfg.twin.model if size == MAIN else cfg.sizes[size]
    twin_dir = twin_dirs(cfg, run_dir)[size, mode]
    tokenizer = os.path.relpath(run_dir / "tokenizer", twin_dir)  # "../../tokenizer": the study dir can move
    return cfg.twin.replace(mode=mode, tokenizer=tokenizer, model=model)


def expand_spec(spec: str, run_dir: Path, size: str = MAIN) -> str:
    """A backbone spec with the study's placeholders replaced by its run directories."""
    dirs = twin_dirs_main(run_dir, size)
    return (spec.replace(TWIN_VIDEO, str(dirs["video"])).replace(TWIN_IMAGE, str(dirs["image"]))
            .replace(TOKENIZER, str(run_dir / "tokenizer")))


def twin_dirs_main(run_dir: Path, size: str = MAIN) -> dict[str, Path]:
    return {m: run_dir / "twins" / f"{size}-{m}" for m in ("video", "image")}


def _final_step(cfg: StudyConfig, spec: str) -> int:
    """The checkpoint step a spec's weights are at, without loading it: ``walt@STEP`` at STEP, the study's trained
    twins at ``twin.train.steps``, everything else (controls, external models) at 0."""
    kind, options, _ = parse_backbone_spec(spec)
    if kind != "walt":
        return 0
    if "step" in options:
        return int(options["step"])
    return cfg.twin.train.steps if TWIN_VIDEO in spec or TWIN_IMAGE in spec else 0


def planned_cells(cfg: StudyConfig, run_dir: Path) -> set[tuple[str, int, int, float, str]]:
    """(backbone, checkpoint step, block, t, task) of every cell of the study's plan, each task's prior included:
    what a report of this plan shows (a store may hold more, from a larger plan run before)."""
    cells = {(j.backbone, j.step, j.block, j.t, j.task) for j in plan_jobs(cfg, run_dir)}
    return cells | {(PRIOR, 0, 0, 0.0, task) for task in cfg.tasks}


def plan_jobs(cfg: StudyConfig, run_dir: Path) -> list[Job]:
    """Every probe cell of the study, headline cells first, in a stable order."""
    jobs: list[Job] = []

    def add(name: str, spec: str, block: int, t: float, tasks: tuple[str, ...], seeds: tuple[int, ...],
            size: str = MAIN) -> None:
        for task in tasks:
            for ns in cfg.noise_seeds:
                for ps in seeds:
                    jobs.append(Job(name, expand_spec(spec, run_dir, size), block, t, task, ns, ps,
                                    _final_step(cfg, spec)))

    for name, spec in cfg.backbones.items():  # the headline cells: every probe seed
        add(name, spec, *cfg.headline_of(name), cfg.tasks, cfg.probe_seeds)
    first = cfg.probe_seeds[:1]  # the sweeps and analyses: the first probe seed
    for name in cfg.reference:
        spec = cfg.backbones[name]
        block, t = cfg.headline_of(name)
        for nt in cfg.noise_sweep:
            add(name, spec, block, nt, cfg.sweep_tasks, first)
        for nb in cfg.block_sweep:
            add(name, spec, nb, t, cfg.sweep_tasks, first)
        for step in cfg.budget_steps:  # own twins only (validated)
            add(name, spec.replace("walt:", f"walt@{step}:", 1), block, t, cfg.sweep_tasks, first)
        for size in cfg.sizes:  # the same twin spec, in the size's run directories
            add(f"{name}@{size}", spec, block, t, cfg.sweep_tasks, first, size)
    return list(dict.fromkeys(jobs))  # the sweeps cross at the headline cell: keep each cell once


def _training_stages(cfg: StudyConfig, run_dir: Path, cache: FeatureCache,
                     progress: bool) -> list[tuple[str, Callable[[], Any]]]:
    """The study's own runs that its backbones use and that are not finished yet, as (stage name, run) in training
    order: the tokenizer, the twins (and their sizes), and, when the twins are the reference pair, the feature
    network of the Fréchet distances."""
    if not (cfg.uses("{twin:") or cfg.uses(TOKENIZER)):
        return []
    stages: list[tuple[str, Callable[[], Any]]] = []
    tok_dir = run_dir / "tokenizer"
    if not _exported(tok_dir, cfg.tokenizer.to_dict()):
        stages.append(("tokenizer", lambda: train_tokenizer(cfg.tokenizer, tok_dir, cache, resume=True,
                                                            progress=progress)))
    if not cfg.uses("{twin:"):
        return stages
    for (size, mode), d in twin_dirs(cfg, run_dir).items():
        tcfg = _twin_config(cfg, run_dir, size, mode)
        if not _exported(d, tcfg.to_dict()):
            stages.append((f"twin {size}-{mode}", lambda tcfg=tcfg, d=d: train_denoiser(
                tcfg, d, cache, resume=True, progress=progress)))
    fn_dir = run_dir / "feature_net"
    if cfg.own_twins() and not _exported(fn_dir, cfg.feature_net.to_dict()):
        stages.append(("feature net", lambda: train_feature_net(cfg.feature_net, fn_dir, cache, resume=True,
                                                                progress=progress)))
    return stages


def _extraction_group(cfg: StudyConfig, job: Job) -> tuple[Any, ...]:
    """The cells that one extraction serves: same backbone, t, noise seed, view and clips (any block)."""
    return job.spec, job.t, job.noise_seed, TASKS[job.task].view, tuple(sorted(cfg.roles(job.task).items()))


def _prefetch(cfg: StudyConfig, rb: ResolvedBackbone, job: Job, todo: list[tuple[Job, Cell]],
              roles: dict[str, dict[str, RoleData]], cache: FeatureCache, timed: Timings,
              ctx: DistContext | None = None) -> None:
    """Extract, in one pass per role, every block that the remaining cells on the same clips need at this job's
    (backbone, t, noise seed, view): one denoiser forward serves the whole block sweep. Collective with a
    distributed ``ctx``: every rank extracts its share of the shards."""
    view = TASKS[job.task].view
    same = [j for j, _ in todo if _extraction_group(cfg, j) == _extraction_group(cfg, job)]
    blocks = sorted({j.block for j in same})
    for role in ROLES:
        clips, limit = roles[job.task][role].clips, cfg.probe_clips[role]
        timed("extract", lambda clips=clips, limit=limit: ensure_features(
            rb.backbone, clips, view, blocks, job.t, job.noise_seed, cache, limit=limit, progress=False, ctx=ctx))


def _prefetch_targets(cfg: StudyConfig, needs: Sequence[tuple[str, str]], roles: dict[str, dict[str, RoleData]],
                      cache: FeatureCache, ctx: DistContext) -> None:
    """Compute the missing targets of the (task, role) pairs ``needs`` (in order) before any probe reads them: one
    :func:`ensure_targets` per clip sequence, by the first task that lacks its file there (as the cells in that order
    would have), the sequences dealt round-robin over the ranks."""
    picked: dict[tuple[str, int], tuple[str, str]] = {}
    for task, role in needs:
        clips, limit = roles[task][role].clips, cfg.probe_clips[role]
        where = (clips.name, limit)
        if where not in picked and not targets_path(make_task(task, task_context(roles[task])), clips, cache,
                                                    limit).is_file():
            picked[where] = (task, role)
    for task, role in rank_share(broadcast_object(list(picked.values()), ctx), ctx):
        ensure_targets(make_task(task, task_context(roles[task])), roles[task][role].clips, cache,
                       cfg.probe_clips[role], progress=False)
    wait_for_all(ctx)


def study_cell(cfg: StudyConfig, job: Job, rb: ResolvedBackbone, dataset: str) -> Cell:
    """The results-store key of a study job: everything that changes its number."""
    return Cell(cfg.name, job.backbone, rb.backbone.identity, rb.mode, rb.step, job.block, job.t, job.noise_seed, 1,
                job.task, dataset, clips_key(cfg.probe_clips), job.probe_seed, cfg.probe.replace(seed=0).hash())


def _prior_cell(cfg: StudyConfig, task: str, roles: dict[str, dict[str, RoleData]]) -> Cell:
    return Cell(cfg.name, PRIOR, PRIOR, "none", 0, 0, 0.0, 0, 1, task, data_identity(roles[task]),
                clips_key(cfg.probe_clips), 0, cfg.probe.hash())


def _current_cells(cfg: StudyConfig) -> dict[str, dict[str, Any]]:
    """task -> the cell columns every headline row of this study's config has on that task (its datasets' identity and
    clip counts), so a table never averages in rows of an earlier config of the same study (other data, other
    probe settings)."""
    return {task: {"dataset": data_identity(task_roles(task, cfg.roles(task))), "clips": clips_key(cfg.probe_clips)}
            for task in cfg.tasks}


def _is_current(row: Mapping[str, Any], cfg: StudyConfig, current: dict[str, dict[str, Any]]) -> bool:
    """Whether a stored row belongs to this config's headline cells (see :func:`_current_cells`)."""
    want = current[row["task"]]
    hashes = {cfg.probe.hash()} if row["backbone"] == PRIOR else {cfg.probe.replace(seed=0).hash()}
    return row["dataset"] == want["dataset"] and row["clips"] == want["clips"] and row["config_hash"] in hashes


def _latest_identities(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], str]:
    """(backbone name, checkpoint step) -> the identity of its newest row: the weights the name stands for now,
    so a table never averages in the cells of weights it was retrained away from (``--force``, another seed)."""
    latest: dict[tuple[str, int], tuple[str, str]] = {}
    for r in rows:
        key = (r["backbone"], r["checkpoint_step"])
        if key not in latest or r["time"] > latest[key][0]:
            latest[key] = (r["time"], r["identity"])
    return {key: identity for key, (_, identity) in latest.items()}


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


def _run_probes(cfg: StudyConfig, run_dir: Path, cache: FeatureCache, ctx: DistContext,
                timed: Timings, progress: bool) -> None:
    """Probe every cell of the plan not in the store yet, in three steps, each finished by every rank before the
    next begins:

    1. extraction: one collective :func:`_prefetch` per extraction group (every rank extracts its share of the
       shards), so features are complete before any rank reads them and no two ranks extract the same shard;
    2. targets: each missing clip sequence's targets, on one rank each;
    3. cells, in probe banks (:func:`bank_groups`: a task's cells train as one vectorised model, cut into one part
       per rank), dealt round-robin: in round ``k`` rank ``r`` trains group ``k·W + r``.

    Rank 0 alone opens the results store: it decides the todo list (broadcast) and, after each round, gathers the
    round's results (``gather_objects``) and writes each cell once, in its own transaction. A single writer needs no
    cross-process locking, which SQLite cannot promise on the network filesystems multi-node runs share; and
    because every round lands in the store before the next begins, a rank killed mid-study (torchrun then stops the
    others) loses at most the banks of one round, and a rerun recomputes no stored cell (a probe's result does not
    depend on which other probes share its bank). In a single process this is the same path, with rounds of one
    bank.
    """
    jobs = plan_jobs(cfg, run_dir)
    backbones = {spec: load_backbone(spec, ctx.device) for spec in dict.fromkeys(j.spec for j in jobs)}
    roles = {task: task_roles(task, cfg.roles(task)) for task in {j.task for j in jobs} | set(cfg.tasks)}
    cells = [study_cell(cfg, job, backbones[job.spec], data_identity(roles[job.task])) for job in jobs]
    show = progress and ctx.is_main
    with ResultsStore(run_dir / "results.sqlite") if ctx.is_main else contextlib.nullcontext() as store:
        left = None
        if store is not None:
            for task, task_roles_ in roles.items():  # name the datasets of cells stored before specs were recorded
                store.add_data_specs(data_identity(task_roles_), cfg.roles(task))
            left = ([i for i, cell in enumerate(cells) if not store.has(cell)],
                    [task for task in cfg.tasks if not store.has(_prior_cell(cfg, task, roles))])
        todo_ids, priors = broadcast_object(left, ctx)
        todo = [(jobs[i], cells[i]) for i in todo_ids]

        firsts: dict[tuple[Any, ...], Job] = {}  # the first cell of each extraction group, in todo order
        for job, _ in todo:
            firsts.setdefault(_extraction_group(cfg, job), job)
        for job in tqdm(list(firsts.values()), desc="extract", unit="set", disable=not show, dynamic_ncols=True):
            _prefetch(cfg, backbones[job.spec], job, todo, roles, cache, timed, ctx)
        _prefetch_targets(cfg, [(j.task, r) for j, _ in todo for r in ROLES]
                          + [(task, r) for task in priors for r in ("train", "test")], roles, cache, ctx)

        groups = bank_groups(cfg, [job for job, _ in todo], ctx.world_size)
        mine = rank_share(range(len(groups)), ctx)
        bar = tqdm(total=len(todo), desc="probes", unit="cell", disable=not show, dynamic_ncols=True)
        for k in range(-(-len(groups) // ctx.world_size)):
            out = None
            if k < len(mine):
                ids = groups[mine[k]]
                job = todo[ids[0]][0]
                bar.set_postfix_str(f"{job.task}, {len(ids)} cells in one bank")
                cells = [CellRequest(backbones[j.spec].backbone, j.block, j.t, j.noise_seed, j.probe_seed)
                         for j in (todo[i][0] for i in ids)]
                res = timed("probes", lambda job=job, cells=cells: run_probes(
                    cells, roles[job.task], job.task, cfg.probe, cache, ctx.device, limits=cfg.probe_clips,
                    progress=False))
                out = [(i, {m: float(v) for m, v in r.test.items()}, np.asarray(r.per_clip))  # CPU only
                       for i, r in zip(ids, res, strict=True)]
            for items in gather_objects(out, ctx) or []:  # rank 0: this round's results, in rank order
                for i, metrics, per_clip in items or []:
                    job, cell = todo[i]
                    store.add(cell, metrics, per_clip, data_specs=cfg.roles(job.task))
                    bar.update(1)
        bar.close()
        if store is not None:
            for task in priors:  # each task's no-information baseline, for reference
                store.add(_prior_cell(cfg, task, roles),
                          *prior_metrics(roles[task], task, cache, cfg.probe_clips, progress=False),
                          data_specs=cfg.roles(task))
            store.export_csv(run_dir / "results.csv")


def _generation(cfg: StudyConfig, run_dir: Path, cache: FeatureCache, device: torch.device,
                timed: Timings, progress: bool) -> None:
    """Fréchet distances of samples of every twin, size and kept checkpoint (and the untrained control), when the
    study's own twins are its reference pair."""
    if not cfg.own_twins():
        return
    path = run_dir / "generation.json"
    rows: list[dict[str, Any]] = read_json(path) if path.is_file() else []
    done = {(r["backbone"], r["checkpoint_step"]) for r in rows}
    dirs = twin_dirs(cfg, run_dir)
    wanted = []
    for (size, mode), d in dirs.items():
        name = f"walt-{mode}" if size == MAIN else f"walt-{mode}@{size}"
        wanted.append((name, mode, size, cfg.twin.train.steps, f"walt:{d}"))
        if size == MAIN:
            wanted += [(name, mode, size, s, f"walt@{s}:{d}") for s in cfg.budget_steps]
    wanted.append((UNTRAINED, "video", MAIN, 0, f"walt-untrained:{dirs[MAIN, 'video']}"))
    wanted = [w for w in wanted if (w[0], w[3]) not in done]
    if not wanted:
        return
    test = resolve_roles(dict.fromkeys(ROLES, cfg.dataset))["test"]
    ds = test.dataset
    real = ensure_videos(test.clips, cache, progress=progress).load_all()[1].numpy()  # (N, T, H, W, 3)
    evaluator = FrechetEvaluator(load_feature_net(run_dir / "feature_net"), real)
    tokenizer, _ = load_tokenizer(run_dir / "tokenizer")
    for name, mode, size, step, spec in tqdm(wanted, desc="generation FD", disable=not progress):
        rb = load_backbone(spec, device)
        samples = timed("generation", lambda rb=rb, mode=mode: generate(
            rb.backbone.denoiser, tokenizer, mode, (ds.frames, ds.height, ds.width), cfg.generation_samples,
            cfg.sampling_steps, seed=0,
            device=device, batch_size=64, progress=False))
        fd = evaluator(samples)
        rows.append({"backbone": name, "mode": mode, "model": size, "checkpoint_step": step,
                     "frechet_distance": fd["frame_fd"], **fd})
        atomic_write_json(path, rows)


def _pca(cfg: StudyConfig, run_dir: Path, cache: FeatureCache, device: torch.device, progress: bool) -> None:
    """Frames and headline tokens of a few test clips under the reference pair and the control, for the report's
    PCA figures."""
    names = [*cfg.reference, *([cfg.control] if cfg.control else [])]
    files = [run_dir / "pca" / f"clip-{i:03d}.npz" for i in range(cfg.pca_clips)]
    if all(f.is_file() for f in files):
        return
    test = resolve_roles(dict.fromkeys(ROLES, cfg.dataset))["test"].clips
    videos = ensure_videos(test, cache, progress=progress)
    tokens = {}
    for name in names:
        rb = load_backbone(expand_spec(cfg.backbones[name], run_dir), device)
        block, t = cfg.headline_of(name)
        feats = ensure_features(rb.backbone, test, "clip", [block], t, 0, cache,
                                limit=cfg.probe_clips["test"], progress=False)[block]
        tokens[name] = feats.take(range(cfg.pca_clips)).float().numpy()  # (n, T_f, H_f, W_f, C)
    frames = videos.take(range(cfg.pca_clips)).numpy()
    for i, f in enumerate(files):
        arrays = {"frames": frames[i], **{f"tokens__{k}": v[i] for k, v in tokens.items()}}
        with atomic_path(f) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def check_artifacts(stored: StudyConfig, cfg: StudyConfig, path: Path) -> None:
    """A study's trained artifacts (its data, tokenizer, twins, model sizes already trained and feature network) may
    not change under a run directory; its plan (tasks, backbones, sweeps, seeds, probes) may. An error names every
    changed artifact field."""
    old, new = stored.artifacts(), cfg.artifacts()
    changed = list(dict_changes({k: v for k, v in old.items() if k != "sizes"},
                                {k: v for k, v in new.items() if k != "sizes"}))
    changed += [f"sizes.{name}" for name in old["sizes"] if name in new["sizes"] and old["sizes"][name] !=
                new["sizes"][name]]
    if changed:
        raise ConfigError(f"{path}: this study's trained artifacts were made with other settings; changed: "
                          f"{', '.join(changed)}. Use another --out for them (the plan, e.g. tasks, backbones, "
                          f"sweeps and seeds, may change freely)")


def _prefetch_training_data(cfg: StudyConfig, stages: list[tuple[str, Callable[[], Any]]], cache: FeatureCache,
                            ctx: DistContext, progress: bool) -> None:
    """Under torchrun, render the clips the training stages read (the study dataset's train role, and its val role
    for the feature net) into the cache once, every rank its share, before every rank's stages read them."""
    if not ctx.is_distributed or not stages:
        return
    names = ("train", "val") if any(name == "feature net" for name, _ in stages) else ("train",)
    for data in resolve_roles(dict.fromkeys(names, cfg.dataset)).values():
        ensure_videos(data.clips, cache, progress=progress, ctx=ctx)


def run_study(cfg: StudyConfig, run_dir: str | Path, progress: bool = True) -> Path:
    """Run (or finish) the study in ``run_dir``; returns the results store's path. Under torchrun every rank calls
    it alike (see the module docstring); progress and files are rank 0's. The study holds its folder's lock
    (``utils.lock``) while it runs: a second process on the same folder is refused."""
    run_dir = Path(run_dir)
    with folder_lock(run_dir, what="study"):
        return _run_study(cfg, run_dir, progress)


def _run_study(cfg: StudyConfig, run_dir: Path, progress: bool) -> Path:
    ctx = setup_distributed(cfg.device)
    cfg_path = run_dir / "study_config.json"
    if cfg_path.is_file():  # every rank checks, so every rank stops with the same error
        check_artifacts(StudyConfig.load(cfg_path), cfg, cfg_path)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(cfg_path)  # the artifacts as before, the plan as now
    wait_for_all(ctx)
    progress = progress and ctx.is_main
    cache = FeatureCache(run_dir / "cache")
    timed = Timings(run_dir / "timings.json", enabled=ctx.is_main)
    start = time.perf_counter()
    training = _training_stages(cfg, run_dir, cache, progress)
    names = [name for name, _ in training]
    if broadcast_object(names, ctx) != names:
        raise RuntimeError(f"rank {ctx.rank} finds other training stages left ({names}) than rank 0; is {run_dir} "
                           "on a filesystem every rank shares?")
    _prefetch_training_data(cfg, training, cache, ctx, progress)
    stages = [(name, lambda name=name, fn=fn: timed(name, fn)) for name, fn in training]
    stages.append(("probes", lambda: _run_probes(cfg, run_dir, cache, ctx, timed, progress)))
    if ctx.is_main:  # the other ranks wait for these at the end
        stages += [("generation", lambda: _generation(cfg, run_dir, cache, ctx.device, timed, progress)),
                   ("pca", lambda: timed("pca", lambda: _pca(cfg, run_dir, cache, ctx.device, progress)))]
    for number, (name, run) in enumerate(stages, 1):
        _announce(number, len(stages), name, start, progress)
        run()
    _announce(len(stages), len(stages), "done", start, progress)
    timed.seconds["total"] = round(timed.seconds.get("total", 0.0) + time.perf_counter() - start, 2)
    timed.save()
    wait_for_all(ctx)
    return run_dir / "results.sqlite"


def headline_table(cfg: StudyConfig, store_path: Path) -> str:
    """The results table: each task's metrics at the headline cell of every backbone and the no-information prior,
    as the mean over probe (and noise) seeds; under the primary metric its standard error over test clips (``s.e.``)
    and, with several seeds, the sample std of the seeds' values (``seed sd``); the reference pair's video side
    relative to its image side, and the video side against the control in standard errors (``z = (video - control)
    / sqrt(se_v^2 + se_c^2)``, positive when the video side is better; |z| > 2 is a difference larger than test-set
    noise). The paired block below it compares the same test clips (see :func:`paired_table`)."""
    current = _current_cells(cfg)
    with ResultsStore(store_path) as store:
        rows = [r for r in store.query(study=cfg.name) if r["task"] in current and _is_current(r, cfg, current)]
    identities = _latest_identities(rows)
    rows = [r for r in rows if r["identity"] == identities[r["backbone"], r["checkpoint_step"]]]
    names = [*cfg.backbones, PRIOR]
    video, image = cfg.reference
    control = cfg.control
    steps = {name: _final_step(cfg, spec) for name, spec in cfg.backbones.items()}

    def values(backbone: str, task: str, metric: str) -> list[float]:
        block, t = (0, 0.0) if backbone == PRIOR else cfg.headline_of(backbone)
        step = steps.get(backbone, 0)
        return [r["value"] for r in rows if r["backbone"] == backbone and r["task"] == task
                and r["metric"] == metric and r["block"] == block and r["t"] == t and r["checkpoint_step"] == step]

    def value(backbone: str, task: str, metric: str) -> float:
        vals = values(backbone, task, metric)
        return float(np.mean(vals)) if vals else float("nan")

    def seed_sd(backbone: str, task: str, metric: str) -> float:
        vals = values(backbone, task, metric)
        return float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")

    seeded = cfg.replicates() > 1
    z_name = "video-untr. z" if control == UNTRAINED else f"video-{control} z"
    head = (f"{'task':<16}{'metric':<28}" + "".join(f"{n:>16}" for n in names) + f"{'video/image':>14}"
            + (f"{z_name:>15}" if control else ""))
    lines = ([f"note: {cfg.caveat}"] if cfg.caveat else []) + [head, "-" * len(head)]
    for task in (t for t in TASKS if t in cfg.tasks):
        primary = TASK_METRICS[task][0]
        for metric in TASK_METRICS[task]:
            vals = {n: value(n, task, metric) for n in names}
            rel = relative_percent(vals[video], vals[image], HIGHER_IS_BETTER[metric])
            line = f"{task:<16}{metric:<28}" + "".join(f"{v:>16.4f}" for v in vals.values()) + f"{rel:>13.1f}%"
            if metric != primary:
                lines.append(line)
                continue
            se = {n: value(n, task, f"{metric}_se") for n in names}
            if control:
                z = margin_z(vals[video], vals[control], se[video], se[control], HIGHER_IS_BETTER[metric])
                line += f"{z:>15.1f}"
            lines.append(line)
            lines.append(f"{'':<16}{'  s.e.':<28}" + "".join(f"{v:>16.4f}" for v in se.values()))
            if seeded:
                lines.append(f"{'':<16}{'  seed sd':<28}" + "".join(
                    f"{seed_sd(n, task, metric):>16.4f}" for n in names))
    legend = control_legend(names)
    return "\n".join(lines + ["", *paired_table(cfg, store_path, current, identities)]
                     + (["", "controls:", *(f"  {line}" for line in legend)] if legend else []))


def paired_table(cfg: StudyConfig, store_path: Path, current: dict[str, dict[str, Any]],
                 identities: dict[tuple[str, int], str]) -> list[str]:
    """Lines of the paired comparisons at the headline cells: the video side against the control and against the
    image side, from the per-clip primary metric on the same test clips, averaged over probe and noise seeds: the
    mean difference (positive: the video side is better), its paired z and a bootstrap 95% interval; with several
    seeds also the smallest of the per-seed z (seed i of one side against seed i of the other), so a claim can be
    seen to hold on every seed. ``current`` is :func:`_current_cells` and ``identities`` :func:`_latest_identities`
    (the table above computed both)."""
    video, image = cfg.reference
    others = [n for n in (cfg.control, image) if n]
    steps = {name: _final_step(cfg, spec) for name, spec in cfg.backbones.items()}
    seeded = cfg.replicates() > 1
    width = 44 if seeded else 36
    with ResultsStore(store_path) as store:
        def per_clip(name: str, task: str) -> dict[tuple[int, int], np.ndarray]:
            """(noise seed, probe seed) -> the per-clip scores of that replicate (the prior: one replicate)."""
            block, t = (0, 0.0) if name == PRIOR else cfg.headline_of(name)
            return {(c["noise_seed"], c["probe_seed"]): a for c, a in store.clip_scores(
                study=cfg.name, backbone=name, task=task, block=block, t=t, checkpoint_step=steps.get(name, 0))
                if _is_current(c, cfg, current) and c["identity"] == identities.get((name, c["checkpoint_step"]))}

        head = f"{'paired, same test clips':<24}" + "".join(f"{f'{video} - {o}':>{width}}" for o in others)
        sub = "diff   z [95% CI of diff]" + (" min z" if seeded else "")
        lines = [head, f"{'task':<24}" + "".join(f"{sub:>{width}}" for _ in others), "-" * len(head)]
        for task in (t for t in TASKS if t in cfg.tasks):
            better = HIGHER_IS_BETTER[TASK_METRICS[task][0]]
            v = per_clip(video, task)
            cells = []
            for other in others:
                o = per_clip(other, task)
                shared = sorted(set(v) & set(o))
                sizes = {len(a) for a in (*v.values(), *o.values())}
                if not shared or len(sizes) != 1:
                    cells.append(f"{'(no per-clip scores)':>{width}}")
                    continue
                d = paired_difference(np.mean([v[k] for k in shared], axis=0),
                                      np.mean([o[k] for k in shared], axis=0), better)
                cell = f"{d['diff']:>+10.4f}{d['z']:>6.1f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
                if seeded:
                    cell += f"{min(paired_difference(v[k], o[k], better)['z'] for k in shared):>8.1f}"
                cells.append(cell.rjust(width))
            lines.append(f"{task:<24}" + "".join(cells))
        lines += ["", *_against_prior(cfg, per_clip)]
    return lines


def _against_prior(cfg: StudyConfig, per_clip: Callable[[str, str], dict[tuple[int, int], np.ndarray]]
                   ) -> list[str]:
    """Lines of every backbone's paired z against each task's prior (the same test clips; the seed mean, and with
    several seeds the smallest per-seed z in brackets): a backbone reads a task only where this is well above 0,
    and the pixels control shows whether the readout can read it from the clip at all."""
    names = list(cfg.backbones)
    lines = [f"{'paired z against the prior':<28}" + "".join(f"{n:>16}" for n in names)]
    lines.append("-" * len(lines[0]))
    for task in (t for t in TASKS if t in cfg.tasks):
        better = HIGHER_IS_BETTER[TASK_METRICS[task][0]]
        prior = next(iter(per_clip(PRIOR, task).values()), None)
        cells = []
        for name in names:
            runs = list(per_clip(name, task).values())
            if prior is None or not runs or {len(a) for a in runs} != {len(prior)}:
                cells.append(f"{'-':>16}")
                continue
            z = paired_difference(np.mean(runs, axis=0), prior, better)["z"]
            worst = min(paired_difference(a, prior, better)["z"] for a in runs)
            cells.append(f"{z:>9.1f}" + (f" ({worst:4.1f})" if len(runs) > 1 else " " * 7))
        lines.append(f"{task:<28}" + "".join(cells))
    return lines
