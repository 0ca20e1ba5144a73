"""What a study costs before it runs: the model FLOPs of each stage, counted by running every network once on the
meta device under ``torch.utils.flop_counter`` (shapes only, no memory, no compute), and the wall time they imply
at a stated throughput. It is an estimate until the study's own ``timings.json`` measures it.

Counted per stage (what the networks compute; data loading, rendering, evaluation metrics and Python overhead are
not FLOPs and are not counted, so small models on a GPU, which are launch-bound, take longer than the estimate):

* tokenizer, each twin, the feature net: ``steps`` x one training step (forward + backward) at the run's batch;
* extract: for each extraction group of the plan (backbone, t, noise seed, view), one tokenizer encoding and
  one denoiser forward up to the deepest block asked for, per probe clip of every role;
* probes: per probe (every cell x its grid of learning rates x weight decays), ``steps`` x a training step of the
  task's probe at the probe batch, plus the forward passes of its validation rounds and its test pass. The steps are
  the vectorised ones: a task's cells train as banks (``study.plan.bank_groups``, split by feature shape and by
  ``probe.bank_memory_gb``), so a bank of any size counts ``steps`` optimiser steps plus its evaluation batches.

Every other backbone (external models, the pixels control) is loaded, and its extraction counted by one forward of
a clip on fake tensors (``backbones.shapes``: no compute) under the FLOP counter; one that cannot be loaded is left
out and listed (``StudyCost.uncounted``). The features' bytes in the cache are counted per feature set, and what
streaming them would cost instead (``StudyConfig.stream``: the backbones run on every epoch's batches).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffprobe.backbones.base import Backbone
from diffprobe.backbones.registry import load_backbone
from diffprobe.backbones.shapes import forward_flops, forward_shapes
from diffprobe.data.registry import open_dataset
from diffprobe.errors import DiffprobeError
from diffprobe.features.extract import EXTRACT_BATCH, FEATURE_DTYPE, free_bytes, view_frames
from diffprobe.metrics.i3d import I3D
from diffprobe.models import WALT, CausalAutoencoder
from diffprobe.readouts.queries import BoxQueries, PointQueries
from diffprobe.spec import BackboneSpec
from diffprobe.study.config import TOKENIZER, TWINS, StudyConfig
from diffprobe.study.plan import Job, bank_groups, plan_jobs, plan_matches, twin_dirs
from diffprobe.tasks import TASKS, Task, TaskContext, make_task
from diffprobe.tasks.probe_config import ProbeConfig, bank_size, eval_batch
from diffprobe.tasks.roles import MATCH_ROLES, MATCH_TASK, task_context, task_roles
from diffprobe.train.runs import twin_batch_size
from diffprobe.utils.runtime import matmul_peak

#: query encoder -> the inputs of one training batch of ``b`` clips (encoders absent here take only the batch size)
QUERY_INPUTS: dict[type[nn.Module], Callable[[int, TaskContext, ProbeConfig], tuple[torch.Tensor, ...]]] = {
    PointQueries: lambda b, ctx, p: (torch.zeros(b, p.train_queries or ctx.max_tracks, 3),),  # (B, N, 3)
    BoxQueries: lambda b, ctx, p: (torch.zeros(b, ctx.max_objects, 4), torch.zeros(b, ctx.max_objects)),
}


#: the study's own kinds, counted from their configs (their weights may not exist yet) -> whether they run the
#: denoiser (``latents`` are the tokenizer's output itself); every other kind is loaded and counted by a fake forward
OWN_KINDS: dict[str, bool] = {"walt": True, "walt-untrained": True, "latents": False}


@dataclasses.dataclass(frozen=True)
class StageCost:
    """One stage's model FLOPs, and what they were counted from."""

    name: str
    flops: float
    steps: int  #: optimiser steps and forward batches: what a per-step overhead (kernel launches, Python) scales with
    detail: str
    #: True for training (DDP: every rank runs every step on its slice of the global batch); False where the ranks
    #: deal the steps out (extraction shards, probe cells)
    ddp: bool = False


@dataclasses.dataclass(frozen=True)
class StudyCost:
    stages: tuple[StageCost, ...]
    uncounted: tuple[str, ...]  #: backbones whose cost is not estimated (could not be loaded), with the reason
    #: bytes the study's features take in the cache (every feature set once, at FEATURE_DTYPE)
    feature_bytes: float = 0.0
    #: FLOPs of the backbones' forwards when the features are streamed instead (``StudyConfig.stream``), and the
    #: extract stage's forwards when they are cached, for comparison (the inputs' encoding is cached either way)
    stream_flops: float = 0.0
    cached_forward_flops: float = 0.0

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.stages)

    def seconds(self, flops_per_s: float, step_seconds: float = 0.0, devices: int = 1) -> dict[str, float]:
        """Each stage's seconds (and ``total``) on ``devices`` ranks sustaining ``flops_per_s`` each, plus
        ``step_seconds`` of overhead per step a rank runs."""
        out = {s.name: s.flops / (flops_per_s * devices) + s.steps * step_seconds / (1 if s.ddp else devices)
               for s in self.stages}
        return {**out, "total": sum(out.values())}


def count_flops(build: Callable[[], nn.Module], inputs: Callable[[], tuple], backward: bool,
                run: Callable[..., torch.Tensor] | None = None) -> float:
    """FLOPs of one pass of ``build()`` on ``inputs()`` (``run(model, *inputs)``, default ``model(*inputs)``),
    with its backward when ``backward``; everything lives on the meta device."""
    with torch.device("meta"):
        model, args = build(), inputs()
    with FlopCounterMode(display=False) as counter:
        if backward:
            out = run(model, *args) if run else model(*args)
            out.float().square().mean().backward()
        else:  # with autograd on (flop_counter's module tracker needs it); nothing runs backward
            run(model, *args) if run else model(*args)
    return float(counter.get_total_flops())


def _autoencoder_loss(model: CausalAutoencoder, x: torch.Tensor) -> torch.Tensor:
    return model(x)["loss"]


def _encode(model: CausalAutoencoder, x: torch.Tensor) -> torch.Tensor:
    return model.encode(x)


def _probe_forward(probe: nn.Module, feats: torch.Tensor, *queries: torch.Tensor) -> torch.Tensor:
    return probe(feats, *queries)


def estimate_study(cfg: StudyConfig, run_dir: str | Path = "runs/estimate") -> StudyCost:
    """The model FLOPs of every stage of ``cfg``'s study (``run_dir`` only names the plan's run folders; nothing is
    read or written there)."""
    ds = open_dataset(cfg.dataset)
    frames, height, width = ds.frames, ds.height, ds.width
    tok = cfg.tokenizer
    clip = (3, frames, height, width)  # (C, T, H, W) of one clip
    with torch.device("meta"):
        latent = CausalAutoencoder(tok.model).latent_shape(frames, height, width)  # (C', T', H', W')
    stages: list[StageCost] = []
    if cfg.uses(TOKENIZER, *TWINS):
        per_step = count_flops(lambda: CausalAutoencoder(tok.model), lambda: (torch.zeros(tok.train.batch_size,
                               *clip),), backward=True, run=_autoencoder_loss)
        stages.append(StageCost("tokenizer", per_step * tok.train.steps, tok.train.steps,
                                f"{tok.train.steps} steps x batch {tok.train.batch_size} clips {clip}", ddp=True))
    encode = count_flops(lambda: CausalAutoencoder(tok.model), lambda: (torch.zeros(1, *clip),), False, _encode)
    walt_cfgs = {"main": cfg.twin.model, **cfg.sizes} if cfg.uses(*TWINS) else {}
    for size, model_cfg in walt_cfgs.items():
        for mode in ("video", "image"):
            twin = cfg.twin.replace(mode=mode, model=model_cfg)
            frames_in = latent[1] if mode == "video" else 1
            batch = twin_batch_size(twin, latent[1])
            per_step = count_flops(lambda m=model_cfg: WALT(m), lambda b=batch, f=frames_in: (
                torch.zeros(b, latent[0], f, *latent[2:]), torch.zeros(b)), backward=True)
            shape = (latent[0], frames_in, *latent[2:])
            stages.append(StageCost(f"twin {size}-{mode}", per_step * twin.train.steps, twin.train.steps,
                                    f"{twin.train.steps} steps x batch {batch} latents {shape}", ddp=True))
    if cfg.own_twins():
        fn = cfg.feature_net
        per_step = count_flops(lambda: I3D(fn.net.replace(num_classes=8)), lambda: (
            torch.zeros(fn.train.batch_size, *clip),), backward=True)
        stages.append(StageCost("feature net", per_step * fn.train.steps, fn.train.steps,
                                f"{fn.train.steps} steps x batch {fn.train.batch_size}", ddp=True))
    jobs = plan_jobs(cfg, Path(run_dir))
    walts = {j.backbone: cfg.model_of(j.size) for j in jobs if j.spec.kind in OWN_KINDS}
    loaded, uncounted = _load_others(jobs)
    jobs = [j for j in jobs if j.spec.kind in OWN_KINDS or j.spec in loaded]
    clips = sum(cfg.probe_clips.values())
    groups: dict[tuple, int] = {}  # extraction group (backbone, spec, t, noise seed, view) -> deepest block
    for j in jobs:
        key = (j.backbone, j.spec, j.t, j.noise_seed, TASKS[j.task].view)
        groups[key] = max(groups.get(key, 0), j.block)
    views = {key[-1] for key in groups if key[1].kind in OWN_KINDS}  # the latents are cached once per view
    extract = sum(clips * encode * (latent[1] if view == "clip" else 1) / latent[1] for view in views)
    image_dirs = {str(d) for (_, mode), d in twin_dirs(cfg, Path(run_dir)).items() if mode == "image"}
    image = {j.backbone for j in jobs if j.spec.kind == "walt" and j.spec.path in image_dirs}  # the image twins
    per_clip = _forward_flops(groups, walts, loaded, latent, (frames, height, width), image)
    forwards = sum(per_clip.values()) * clips
    batches = len(groups) * math.ceil(clips / EXTRACT_BATCH)
    stages.append(StageCost("extract", extract + forwards, batches, f"{len(groups)} extraction groups x {clips} clips"))
    probe_flops, probe_steps, banks, feature_bytes = _probe_flops(cfg, jobs, walts, latent, clip, image, loaded)
    grid = len(cfg.probe.readout.learning_rates) * len(cfg.probe.readout.weight_decays)
    stages.append(StageCost("probes", probe_flops, probe_steps,
                            f"{len(jobs)} cells x {grid} probes in {banks} banks x {cfg.probe.steps} steps x batch "
                            f"{cfg.probe.batch_size}"))
    matches = [j for j in plan_matches(cfg, Path(run_dir)) if j.spec.kind in OWN_KINDS or j.spec in loaded]
    if matches:
        stages.append(_match_stage(cfg, matches, groups, walts, loaded, latent, clip, image))
    stream = sum(per_clip[g] * n for g, n in _streamed_clips(cfg, jobs).items())
    return StudyCost(tuple(stages), tuple(uncounted), feature_bytes, stream, forwards)


def _load_others(jobs: list[Job]) -> tuple[dict[BackboneSpec, Backbone], list[str]]:
    """The backbones of ``jobs`` that are not the study's own, loaded on the CPU, and ``"SPEC (why)"`` for each one
    that cannot be."""
    loaded, failed = {}, []
    for spec in dict.fromkeys(j.spec for j in jobs if j.spec.kind not in OWN_KINDS):
        try:
            loaded[spec] = load_backbone(spec, torch.device("cpu")).backbone
        except DiffprobeError as e:
            failed.append(f"{spec} ({e})")
    return loaded, failed


def _forward_flops(groups: dict[tuple, int], walts: dict, loaded: dict[BackboneSpec, Backbone],
                   latent: tuple[int, int, int, int], size: tuple[int, int, int], image: set[str]
                   ) -> dict[tuple, float]:
    """Each extraction group's FLOPs for one clip, its backbone run to the group's deepest block: a WALT counted
    from its config (an image twin reads each frame alone), any other backbone by one forward on fake tensors."""
    frames, height, width = size
    walt_flops: dict[tuple[str, int], float] = {}  # (backbone, latent frames) -> one full denoiser forward
    out = {}
    for (backbone, spec, t, seed, view), block in groups.items():
        if spec.kind not in OWN_KINDS:
            out[backbone, spec, t, seed, view] = forward_flops(loaded[spec], view_frames(view, frames), height, width,
                                                               block, t, seed)
            continue
        if not OWN_KINDS[spec.kind]:  # the latents themselves: cached with the encoding
            out[backbone, spec, t, seed, view] = 0.0
            continue
        frames_in, samples = (1, view_frames(view, frames)) if backbone in image else (
            latent[1] if view == "clip" else 1, 1)
        if (backbone, frames_in) not in walt_flops:
            walt_flops[backbone, frames_in] = count_flops(lambda m=walts[backbone]: WALT(m), lambda f=frames_in: (
                torch.zeros(1, latent[0], f, *latent[2:]), torch.zeros(1)), backward=False)
        out[backbone, spec, t, seed, view] = samples * walt_flops[backbone, frames_in] * block / walts[backbone].depth
    return out


def _streamed_clips(cfg: StudyConfig, jobs: list[Job]) -> dict[tuple, int]:
    """Clips each extraction group's backbone runs on when the features are streamed: in each task's bank, every
    probe seed's training stream reads the train role once an epoch, and every validation pass and the test pass
    read theirs (the blocks of a group share each forward). At least this: a bank cut into parts by memory streams
    once per part."""
    p, n = cfg.probe, cfg.probe_clips
    epochs = math.ceil(p.steps * p.batch_size / n["train"])
    val_passes = max(1, p.steps // p.eval_every) if p.eval_every else 1
    out: dict[tuple, int] = {}
    for ids in bank_groups(cfg, jobs):
        seeds: dict[tuple, set[int]] = {}
        for j in (jobs[i] for i in ids):
            seeds.setdefault((j.backbone, j.spec, j.t, j.noise_seed, TASKS[j.task].view), set()).add(j.probe_seed)
        for g, s in seeds.items():
            out[g] = out.get(g, 0) + len(s) * epochs * n["train"] + val_passes * n["val"] + n["test"]
    return out


def _probe_flops(cfg: StudyConfig, jobs: list[Job], walts: dict, latent: tuple[int, int, int, int],
                 clip: tuple[int, int, int, int], image: set[str], loaded: dict[BackboneSpec, Backbone]
                 ) -> tuple[float, int, int, float]:
    """FLOPs of training and evaluating every probe of every cell, the vectorised steps that run them (each bank's
    training steps and evaluation batches), the number of banks, and the bytes of the features they read from the
    cache (each (backbone, step, block, t, noise seed, view, clips) once); ``image``: the image twins' names (a
    latent frame per clip frame); ``loaded``: the other backbones, whose shapes come from a fake forward."""
    p = cfg.probe
    grid_size = len(p.readout.learning_rates) * len(p.readout.weight_decays)
    rounds = p.steps // p.eval_every if p.eval_every else 0
    tasks = {name: make_task(name, task_context(task_roles(name, cfg.roles(name)))) for name in {j.task for j in jobs}}
    per_step: dict[tuple, float] = {}  # (task, C, grid) -> FLOPs of one training step of one probe
    per_probe: dict[tuple, float] = {}  # the same -> FLOPs of one probe's training and evaluation
    other_shapes: dict[tuple, dict[int, tuple[int, ...]]] = {}  # (spec, view) -> {block: (T_f, H_f, W_f, C)}
    total, steps, banks = 0.0, 0, 0
    cached: dict[tuple, float] = {}  # one feature set's key -> its bytes in the cache
    clips_all = sum(cfg.probe_clips.values())
    item = FEATURE_DTYPE.itemsize
    for ids in bank_groups(cfg, jobs):
        shapes: dict[tuple, int] = {}  # (task, C, grid) -> cells: run_probes trains one bank per feature shape
        for j in (jobs[i] for i in ids):
            task = tasks[j.task]
            dim, grid = _feature_dims(j, task.view, walts, latent, clip, image, loaded, other_shapes)
            shapes[j.task, dim, grid] = shapes.get((j.task, dim, grid), 0) + 1
            roles = tuple(sorted(cfg.roles(j.task).items()))
            cached[j.spec, j.block, j.t, j.noise_seed, task.view, roles] = clips_all * math.prod(grid) * dim * item
        for (name, dim, grid), cells in shapes.items():
            task = tasks[name]
            key = (name, dim, grid)
            if key not in per_probe:
                per_step[key] = _probe_pass(task, p, dim, grid, p.batch_size, backward=True)
                evals = rounds * cfg.probe_clips["val"] + cfg.probe_clips["test"]  # clips read without gradients
                per_probe[key] = per_step[key] * p.steps + _probe_pass(task, p, dim, grid, 1, backward=False) * evals
            total += per_probe[key] * cells * grid_size
            size = bank_size(p, (*grid, dim), step_flops=per_step[key])  # probes per bank, as train_probes cuts them
            for lo in range(0, cells * grid_size, size):
                clips = eval_batch(p, (*grid, dim), min(size, cells * grid_size - lo))
                steps += p.steps + rounds * math.ceil(cfg.probe_clips["val"] / clips)
                banks += 1
            for lo in range(0, cells, size):  # the chosen probe of every cell, on test
                steps += math.ceil(cfg.probe_clips["test"] / eval_batch(p, (*grid, dim), min(size, cells - lo)))
    return total, steps, banks, sum(cached.values())


_SOFTARGMAX_FLOPS = 8  #: per (query, similarity cell, setting): mask, scale, exp, sum and two weighted sums


def _match_stage(cfg: StudyConfig, matches: list[Job], probe_groups: dict[tuple, int], walts: dict,
                 loaded: dict[BackboneSpec, Backbone], latent: tuple[int, int, int, int],
                 clip: tuple[int, int, int, int], image: set[str]) -> StageCost:
    """The matcher's cells: the forwards of the features no probe reads (a group the probes extract only to a
    shallower block, or not at all), then per val and test clip the cosine similarity of every query against every
    feature frame on the similarity grid, and the soft-argmax of every setting of the grid on val (one on test)."""
    view = TASKS[MATCH_TASK].view
    val, test = (cfg.probe_clips[r] for r in MATCH_ROLES)
    extra: dict[tuple, int] = {}
    for j in matches:
        key = (j.backbone, j.spec, j.t, j.noise_seed, view)
        if probe_groups.get(key, 0) < j.block:
            extra[key] = max(extra.get(key, 0), j.block)
    forwards = sum(_forward_flops(extra, walts, loaded, latent, clip[1:], image).values()) * (val + test)
    ctx = task_context(task_roles(MATCH_TASK, cfg.roles(MATCH_TASK)))
    g = cfg.match_grid
    settings = len(g.temperatures) * len(g.windows)
    pairs = ctx.max_tracks * ctx.height * ctx.width * g.upsample ** 2  # (query, similarity cell) pairs of one frame
    shapes: dict[tuple, dict] = {}
    similarity = 0.0
    for j in matches:
        dim, (frames_f, _, _) = _feature_dims(j, view, walts, latent, clip, image, loaded, shapes)
        similarity += pairs * frames_f * (2 * dim * (val + test) + _SOFTARGMAX_FLOPS * (settings * val + test))
    return StageCost("match", forwards + similarity, len(matches),
                     f"{len(matches)} cells x {val}+{test} clips x {ctx.max_tracks} queries; {len(extra)} extraction "
                     f"groups of their own")


def _feature_dims(j: Job, view: str, walts: dict, latent: tuple[int, int, int, int], clip: tuple[int, int, int, int],
                  image: set[str], loaded: dict[BackboneSpec, Backbone], other_shapes: dict[tuple, dict]
                  ) -> tuple[int, tuple[int, int, int]]:
    """``(C, (T_f, H_f, W_f))`` of a job's features in ``view``: a WALT's from its config (an image twin: a latent
    frame per clip frame), the latents', or another backbone's from a fake forward (memoised in ``other_shapes``)."""
    frames_in = 1 if view != "clip" else clip[1] if j.backbone in image else latent[1]
    if j.spec.kind not in OWN_KINDS:
        key = (j.spec, view)
        if key not in other_shapes:
            other_shapes[key] = forward_shapes(loaded[j.spec], view_frames(view, clip[1]), *clip[2:]).shapes
        *grid, dim = other_shapes[key][j.block]
        return dim, tuple(grid)
    if not OWN_KINDS[j.spec.kind]:  # the latents themselves
        return latent[0], (frames_in, *latent[2:])
    m = walts[j.backbone]
    return m.hidden_size, (frames_in, latent[2] // m.patch_size, latent[3] // m.patch_size)


def _probe_pass(task: Task, p: ProbeConfig, dim: int, grid: tuple[int, int, int], batch: int,
                backward: bool) -> float:
    """FLOPs of one pass of ``task``'s probe over ``batch`` clips of ``(grid, dim)`` features."""
    with torch.device("meta"):
        probe = task.make_probe(p.readout, dim, grid)
    make_extra = QUERY_INPUTS.get(type(probe.queries))

    def inputs() -> tuple[torch.Tensor, ...]:  # (B, T_f, H_f, W_f, C) features, then the query encoder's inputs
        return (torch.zeros(batch, *grid, dim), *(make_extra(batch, task.ctx, p) if make_extra else ()))

    return count_flops(lambda: probe, inputs, backward, _probe_forward)


def device_flops_per_s(device: torch.device) -> float:
    """The device's measured matmul peak in the precision its training runs in: bf16 4096^3 on CUDA, fp32 1024^3
    elsewhere, FLOP/s."""
    if device.type == "cuda":
        return matmul_peak(device, torch.bfloat16, 4096)
    return matmul_peak(device, torch.float32, 1024)


def format_estimate(cost: StudyCost, peak: float, mfu: float, step_seconds: float, devices: int,
                    source: str, cache: Path | None = None, streamed: bool = False) -> str:
    """The estimate as a table: each stage's model FLOPs, steps and minutes at ``mfu`` of ``peak`` FLOP/s per device
    on ``devices`` torchrun ranks (ideal scaling), plus ``step_seconds`` per step a rank runs; then the feature
    cache against the free space of ``cache``'s disk, and what streaming the features (``streamed``: the study's
    choice) costs instead."""
    minutes = {k: v / 60 for k, v in cost.seconds(peak * mfu, step_seconds, devices).items()}
    lines = [f"estimate (not a measurement): model FLOPs at {mfu:.0%} of {peak / 1e12:.3g} TFLOP/s per device "
             f"({source}) x {devices} device(s), plus {1e3 * step_seconds:g} ms per step",
             f"{'stage':<20}{'PFLOP':>12}{'steps':>12}{'minutes':>10}  counted from", "-" * 86]
    for s in cost.stages:
        lines.append(f"{s.name:<20}{s.flops / 1e15:>12.3f}{s.steps:>12,}{minutes[s.name]:>10.1f}  {s.detail}")
    lines.append(f"{'total':<20}{cost.flops / 1e15:>12.3f}{sum(s.steps for s in cost.stages):>12,}"
                 f"{minutes['total']:>10.1f}")
    gb = cost.feature_bytes / 1e9
    line = (f"feature cache: {gb:.3g} GB of features (every feature set at "
            f"{str(FEATURE_DTYPE).removeprefix('torch.')}; the clips' and latents' caches are extra)")
    if cache is not None:
        free = free_bytes(cache) / 1e9
        line += f"; {free:.3g} GB free at {cache}: " + ("fits" if gb <= free else "does NOT fit")
    lines.append(line)
    rate = peak * mfu * devices * 60  # FLOPs a minute
    stream, once = cost.stream_flops, cost.cached_forward_flops
    lines.append(f"streamed instead (stream=true{', as this study is' if streamed else ''}): no feature cache; the "
                 f"backbones' forwards take {stream / 1e15:,.3f} PFLOP ({stream / rate:.1f} min), against "
                 f"{once / 1e15:,.3f} PFLOP ({once / rate:.1f} min) extracted once")
    if cost.uncounted:
        lines.append(f"not counted (could not be loaded): {', '.join(cost.uncounted)}")
    return "\n".join(lines)
