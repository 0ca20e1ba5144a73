"""`diffprobe study`: the whole image-vs-video study, resumable stage by stage and cell by cell.

Run directory::

    RUN/study_config.json            the StudyConfig (a different config in the same RUN is an error)
    RUN/tokenizer/  RUN/feature_net/  RUN/twins/<size>-<mode>/     training runs (resumable)
    RUN/cache/                       rendered clips, latents, features, targets (resumable shards)
    RUN/results.sqlite  results.csv  every probe result (a cell already stored is never recomputed)
    RUN/generation.json              Fréchet distances of samples of every twin / checkpoint
    RUN/pca/clip-*.npz               frames + tokens of a few test clips for the PCA figures
    RUN/motion/<backbone>-<hash>/    the motion experiment (motion.json + figures) of each backbone, when planned
    RUN/timings.json                 wall time of each stage of the last run
    RUN/report/report.html           written by `diffprobe report RUN`

Under torchrun every rank runs :func:`run_study`: the training stages train with DDP, the probe stage shares its
extractions and cells across the ranks (see :func:`_run_probes`), the matcher's cells, generation, PCA and the motion
experiment run on rank 0 alone (:mod:`~diffprobe.study.analyses`), and every rank ends at a barrier. Rank 0 alone
writes the run directory's files (the cache's shards aside).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffprobe.backbones.registry import ResolvedBackbone, load_backbone
from diffprobe.data.splits import ROLES, RoleData, resolve_roles
from diffprobe.features.cache import FeatureCache
from diffprobe.features.sources import ensure_features, ensure_inputs, ensure_videos, identity_for
from diffprobe.models.exports import load_tokenizer
from diffprobe.spec import BackboneSpec
from diffprobe.study.analyses import run_matches, run_motions
from diffprobe.study.artifacts import check_artifacts, exported
from diffprobe.study.config import MAIN, TOKENIZER, TWINS, StudyConfig
from diffprobe.study.disk import check_study_disk
from diffprobe.study.plan import (
    Job,
    bank_groups,
    expand_spec,
    extraction_group,
    plan_jobs,
    prior_cell,
    study_cell,
    twin_dir,
    twin_dirs,
)
from diffprobe.study.report_tasks import UNTRAINED
from diffprobe.study.store import Cell, ResultsStore
from diffprobe.tasks import TASKS, make_task
from diffprobe.tasks.roles import data_identity, task_context, task_roles
from diffprobe.tasks.runner import CellRequest, ensure_targets, prior_metrics, run_probes, targets_path
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


def _twin_config(cfg: StudyConfig, run_dir: Path, size: str, mode: str):
    model = cfg.model_of(size)
    # "../../tokenizer": relative, so the study folder can move
    tokenizer = os.path.relpath(run_dir / "tokenizer", twin_dir(run_dir, size, mode))
    return cfg.twin.replace(mode=mode, tokenizer=tokenizer, model=model)


def _training_stages(cfg: StudyConfig, run_dir: Path, cache: FeatureCache,
                     progress: bool) -> list[tuple[str, Callable[[], Any]]]:
    """The study's own runs that its backbones use and that are not finished yet, as (stage name, run) in training
    order: the tokenizer, the twins (and their sizes), and, when the twins are the reference pair, the feature
    network of the Fréchet distances."""
    if not (cfg.uses(TOKENIZER, *TWINS)):
        return []
    stages: list[tuple[str, Callable[[], Any]]] = []
    tok_dir = run_dir / "tokenizer"
    if not exported(tok_dir, cfg.tokenizer.to_dict()):
        stages.append(("tokenizer", lambda: train_tokenizer(cfg.tokenizer, tok_dir, cache, resume=True,
                                                            progress=progress)))
    if not cfg.uses(*TWINS):
        return stages
    for (size, mode), d in twin_dirs(cfg, run_dir).items():
        tcfg = _twin_config(cfg, run_dir, size, mode)
        if not exported(d, tcfg.to_dict()):
            stages.append((f"twin {size}-{mode}", lambda tcfg=tcfg, d=d: train_denoiser(
                tcfg, d, cache, resume=True, progress=progress)))
    fn_dir = run_dir / "feature_net"
    if cfg.own_twins() and not exported(fn_dir, cfg.feature_net.to_dict()):
        stages.append(("feature net", lambda: train_feature_net(cfg.feature_net, fn_dir, cache, resume=True,
                                                                progress=progress)))
    return stages


def _prefetch(cfg: StudyConfig, rb: ResolvedBackbone, job: Job, todo: list[tuple[Job, Cell]],
              roles: dict[str, dict[str, RoleData]], cache: FeatureCache, timed: Timings,
              ctx: DistContext | None = None) -> None:
    """Extract, in one pass per role, every block that the remaining cells on the same clips need at this job's
    (backbone, t, noise seed, view): one denoiser forward serves the whole block sweep (with ``cfg.stream``: only
    the backbone's inputs, the features come as the probes read them). Collective with a distributed ``ctx``: every
    rank extracts its share of the shards."""
    view = TASKS[job.task].view
    same = [j for j, _ in todo if extraction_group(cfg, j) == extraction_group(cfg, job)]
    blocks = sorted({j.block for j in same})
    for role in ROLES:
        clips, limit = roles[job.task][role].clips, cfg.probe_clips[role]
        if cfg.stream:  # the features are computed as the probes read them: only their inputs are cached now
            timed("extract", lambda clips=clips: ensure_inputs(rb.backbone, clips, view, cache, progress=False,
                                                               ctx=ctx))
        else:
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
    cells = [study_cell(cfg, job, backbones[job.spec], data_identity(roles[job.task]),
                        identity_for(backbones[job.spec].backbone, roles[job.task]["test"].clips, TASKS[job.task].view))
             for job in jobs]
    show = progress and ctx.is_main
    with ResultsStore(run_dir / "results.sqlite") if ctx.is_main else contextlib.nullcontext() as store:
        left = None
        if store is not None:
            for task, task_roles_ in roles.items():  # name the datasets of cells stored before specs were recorded
                store.add_data_specs(data_identity(task_roles_), cfg.roles(task))
            left = ([i for i, cell in enumerate(cells) if not store.has(cell)],
                    [task for task in cfg.tasks if not store.has(prior_cell(cfg, task, data_identity(roles[task])))])
        todo_ids, priors = broadcast_object(left, ctx)
        todo = [(jobs[i], cells[i]) for i in todo_ids]

        check_study_disk(cfg, [job for job, _ in todo], backbones, roles, cache)
        firsts: dict[tuple[Any, ...], Job] = {}  # the first cell of each extraction group, in todo order
        for job, _ in todo:
            firsts.setdefault(extraction_group(cfg, job), job)
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
                    progress=False, stream=cfg.stream))
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
                store.add(prior_cell(cfg, task, data_identity(roles[task])),
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
        twin = BackboneSpec("walt", str(d))
        wanted.append((name, mode, size, cfg.twin.train.steps, twin))
        if size == MAIN:
            wanted += [(name, mode, size, s, twin.with_options(step=s)) for s in cfg.budget_steps]
    wanted.append((UNTRAINED, "video", MAIN, 0, BackboneSpec("walt-untrained", str(dirs[MAIN, "video"]))))
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
        stages += [("match", lambda: run_matches(cfg, run_dir, cache, ctx.device, timed, progress)),
                   ("generation", lambda: _generation(cfg, run_dir, cache, ctx.device, timed, progress)),
                   ("pca", lambda: timed("pca", lambda: _pca(cfg, run_dir, cache, ctx.device, progress))),
                   ("motion", lambda: run_motions(cfg, run_dir, ctx.device, timed, progress))]
    for number, (name, run) in enumerate(stages, 1):
        _announce(number, len(stages), name, start, progress)
        run()
    _announce(len(stages), len(stages), "done", start, progress)
    timed.seconds["total"] = round(timed.seconds.get("total", 0.0) + time.perf_counter() - start, 2)
    timed.save()
    wait_for_all(ctx)
    return run_dir / "results.sqlite"


