"""Feature extraction into the cache, and probe training on it, for WALT backbones on Probe World clips.

The backbones are the library's untrained-WALT control (``walt-untrained:RUN``, seed 0) on runs exported with random
weights into a temp folder, at the ``walt-tiny`` size on tiny clips (32x32, 9 frames, tiny tokenizer) and at the
``walt-S`` size on small clips (64x64, 17 frames, small tokenizer: the data and tokenizer of the ``walt-S`` preset;
its position table and windows are sized for 128 px, and clamp to the small clips' 8x8 latents). Everything is
measured at noise level t = 200 (the study's headline) through the library's own calls, into a temp FeatureCache:

1. extraction throughput, clips/s: ``ensure_videos`` (Probe World rendered and cached), the first
   ``ensure_features`` at one block (tokenizer latents encoded and cached, denoiser run, block written), then, from
   the cached latents, ``ensure_features`` at that block and at every block in one forward pass;
2. the cache's ratio: seconds per probe step (the ``action`` task, a one-rate ProbeBank, ``train_probe``'s step)
   on cached features vs the same step recomputing the backbone's features of its batch (``backbone.features``:
   tokenizer + denoiser, from clips held in memory), and vs recomputing only the denoiser from cached latents.

Banks of several probes (seeds, learning rates, backbones) are measured by ``benchmarks/bench_probes.py``.

Every measurement runs ``--repeats`` times, interleaved with its peers; the table gives the median and the spread
from the fastest to the slowest repetition. ``--tiny`` is a seconds-long dry run of every measurement (walt-tiny
only, few clips, few steps).

    python benchmarks/bench_features.py [--device cpu] [--tiny] [--repeats 3] [--out benchmarks/bench_features.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from _common import cpu_name, peak_gflops, sync  # benchmarks/_common.py (the script's folder is on sys.path)
from tqdm import tqdm

from diffprobe.backbones.base import Backbone
from diffprobe.backbones.registry import load_backbone
from diffprobe.data.splits import resolve_roles
from diffprobe.data.world import ProbeWorldConfig
from diffprobe.data.world.dataset import probeworld_spec
from diffprobe.features.cache import FeatureCache
from diffprobe.features.extract import VIEWS
from diffprobe.features.sources import ensure_features, ensure_videos
from diffprobe.models import WALT, CausalAutoencoder
from diffprobe.models.exports import read_export
from diffprobe.readouts import Member, ProbeBank
from diffprobe.tasks import Task, make_task
from diffprobe.tasks.probe_config import ProbeConfig
from diffprobe.tasks.probing import _batch_targets, _stack, _train_batches
from diffprobe.tasks.roles import task_context, task_roles
from diffprobe.tasks.runner import ensure_targets
from diffprobe.tasks.targets import Targets, load_targets
from diffprobe.train.export import export_model
from diffprobe.train.optim import lr_at
from diffprobe.train.runs import DenoiserRunConfig, TokenizerRunConfig
from diffprobe.utils.io import atomic_write_json

T = 200.0  #: noise level of every measurement (the study's headline t)
TASK = "action"  #: the probed task (learned queries over the whole clip)
GOAL = 10.0  #: the project's goal for the cache's ratio
#: model -> (DenoiserRunConfig preset, TokenizerRunConfig preset); the clips are the denoiser preset's dataset
MODELS: dict[str, tuple[str, str]] = {"walt-tiny": ("walt-tiny", "tiny"), "walt-S": ("walt-S", "small")}


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much each measurement runs."""

    extract_clips: dict[str, int]  #: model -> clips of an extraction (the models measured, in order)
    probe_clips: int  #: training clips the probes read (one cache shard)
    probe_batch: int
    probe_steps: int  #: probe steps of one repetition
    warmup_steps: int = 2  #: probe steps run once before the repetitions


FULL = Plan({"walt-tiny": 256, "walt-S": 32}, probe_clips=256, probe_batch=32, probe_steps=20)
TINY = Plan({"walt-tiny": 16}, probe_clips=16, probe_batch=8, probe_steps=2, warmup_steps=1)


def spread(times: list[float]) -> dict[str, float]:
    """Median, fastest and slowest of the repetitions' seconds."""
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds ``fn()`` takes (the device's queued work included), and what it returned."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def world_spec(dataset: str, clips: int) -> str:
    """The spec of a Probe World preset (``probeworld:PRESET``) with ``clips`` training clips."""
    kind, _, preset = dataset.partition(":")
    if kind != "probeworld" or "@" in preset:
        raise ValueError(f"expected a plain Probe World spec probeworld:PRESET, got {dataset!r}")
    return probeworld_spec(ProbeWorldConfig.preset(preset).replace(train_size=clips, val_size=8, test_size=8), preset)


def untrained_walt(name: str, root: Path, device: torch.device) -> tuple[Backbone, str]:
    """The untrained-WALT control of size ``name`` (``walt-untrained:RUN`` on a tokenizer and a video twin exported
    with random weights under ``root``), and the dataset spec of the size's preset."""
    twin_preset, tok_preset = MODELS[name]
    tok_cfg = TokenizerRunConfig.preset(tok_preset)
    twin_cfg = DenoiserRunConfig.preset(twin_preset).replace(mode="video", tokenizer=str(root / "tokenizer"))
    torch.manual_seed(0)
    export_model(root / "tokenizer", CausalAutoencoder(tok_cfg.model).eval(), tok_cfg, kind="tokenizer", step=0)
    tok_sha = read_export(root / "tokenizer", "tokenizer")["sha256"]
    export_model(root / "twin", WALT(twin_cfg.model), twin_cfg, kind="denoiser", step=0,
                 extra={"mode": "video", "tokenizer_sha256": tok_sha})
    return load_backbone(f"walt-untrained:{root / 'twin'}", device).backbone, twin_cfg.dataset


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def headline_block(backbone: Backbone) -> int:
    """The one block measured alone: two thirds of the depth (the study's block 4 of walt-tiny's 6)."""
    return 2 * backbone.num_blocks // 3


def bench_extraction(backbones: dict[str, tuple[Backbone, str]], plan: Plan, device: torch.device, repeats: int,
                     root: Path) -> list[dict[str, Any]]:
    """Clips/s of rendering, first extraction, and extraction from cached latents at one and at every block."""
    setups, shapes = {}, {}
    for name, n in plan.extract_clips.items():
        backbone, dataset = backbones[name]
        clips = resolve_roles({"train": world_spec(dataset, n)})["train"].clips
        warm = resolve_roles({"train": world_spec(dataset, min(8, n))})["train"].clips
        one, every = [headline_block(backbone)], list(range(1, backbone.num_blocks + 1))
        ensure_features(backbone, warm, "clip", every, T, 0, FeatureCache(root / f"warmup-{name}"), progress=False)
        setups[name] = (backbone, clips, one, every, {"render": [], "first": [], "one": [], "every": []})
    for _ in tqdm(range(repeats), desc="extraction", unit="rep"):
        for name, (backbone, clips, one, every, times) in setups.items():  # interleaved
            cache = FeatureCache(root / f"extract-{name}")
            times["render"].append(timed(partial(ensure_videos, clips, cache, progress=False), device)[0])
            for kind, blocks, seed in (("first", one, 0), ("one", one, 1), ("every", every, 2)):
                seconds, out = timed(partial(ensure_features, backbone, clips, "clip", blocks, T, seed, cache,
                                             progress=False), device)
                if sorted(out) != sorted(blocks) or any(len(fs) != len(clips) for fs in out.values()):
                    raise RuntimeError(f"{name}: extraction at blocks {blocks} wrote {[len(f) for f in out.values()]}"
                                       f" clips of blocks {sorted(out)}, expected {len(clips)} of each")
                times[kind].append(seconds)
                shapes[name] = list(out[blocks[0]].feature_shape)  # (T_f, H_f, W_f, C) of the one block
            shutil.rmtree(cache.root)
    rows = []
    for name, (backbone, clips, one, every, times) in setups.items():
        clip = clips[0]["video"].shape  # (T, H, W, 3)
        n = len(clips)
        row: dict[str, Any] = {
            "model": name, "world": MODELS[name][1], "clip": list(clip[:3]), "clips": n, "block": one[0],
            "blocks": every, "block_shape": shapes[name], "params": params(backbone.denoiser),
            "tokenizer_params": params(backbone.encoder.tokenizer)}
        for kind in ("render", "first", "one", "every"):
            row[f"{kind}_s"] = spread(times[kind])
            row[f"{kind}_clips_per_s"] = n / row[f"{kind}_s"]["median"]
        row["every_vs_one"] = row["every_s"]["median"] / row["one_s"]["median"]
        rows.append(row)
    return rows


def recomputed_batches(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                       batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(index, features)`` batches with ``forward(inputs[index], index)`` run on every batch (no feature
    cache): the peer of the cached batches, each epoch in a seeded random order."""
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(inputs), generator=g)
        for lo in range(0, len(order), batch_size):
            index = order[lo:lo + batch_size]
            yield index, forward(inputs[index], index)  # (b,), (b, T_f, H_f, W_f, C)
        epoch += 1


class ProbeLoop:
    """``train_probe``'s step loop (schedule, batch, task targets, ``ProbeBank.step``) over one batch stream, for
    the probes of ``cfg``'s learning rates x weight decays (the tiny preset: one)."""

    def __init__(self, task: Task, cfg: ProbeConfig, feature_shape: tuple[int, ...], targets: Targets,
                 batches: Iterator[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> None:
        t_f, h_f, w_f, c = feature_shape
        prior = task.baseline(targets)  # the task's prior as head output, as train_probe sets it
        baseline = None if prior is None else torch.from_numpy(prior)
        members = [Member(cfg.seed, lr, wd, cfg.grad_clip) for lr in cfg.readout.learning_rates
                   for wd in cfg.readout.weight_decays]
        self.bank = ProbeBank(lambda: task.make_probe(cfg.readout, c, (t_f, h_f, w_f)).set_baseline(baseline),
                              members, task.query_inputs, task.loss).to(device)
        self.task, self.cfg, self.targets, self.batches, self.device = task, cfg, targets, batches, device
        self.queries = torch.Generator().manual_seed(cfg.seed)
        self.done = 0

    def run(self, steps: int) -> None:
        cfg, task = self.cfg, self.task
        for _ in range(steps):
            self.bank.set_lr_scale(lr_at(self.done % cfg.steps, base_lr=1.0, warmup_steps=cfg.warmup_steps,
                                         total_steps=cfg.steps, min_lr_ratio=cfg.min_lr_ratio))
            index, feats = next(self.batches)  # (b,), (b, T_f, H_f, W_f, C)
            tgt = task.training_batch(_batch_targets(self.targets, index, self.device), cfg.train_queries,
                                      self.queries)
            pick = torch.zeros(len(self.bank), dtype=torch.long)  # every probe of the bank reads this one stream
            self.bank.step(_stack([feats], pick, self.device),
                           {k: _stack([v], pick, self.device) for k, v in tgt.items()})
            self.done += 1


def bench_probes(backbone: Backbone, dataset: str, plan: Plan, device: torch.device, repeats: int,
                 root: Path) -> dict[str, Any]:
    """Seconds per probe step on cached vs recomputed features."""
    roles = task_roles(TASK, world_spec(dataset, plan.probe_clips))
    task = make_task(TASK, task_context(roles))
    clips = roles["train"].clips
    cache = FeatureCache(root / "probe")
    block = headline_block(backbone)
    feats = ensure_features(backbone, clips, task.view, [block], T, 0, cache)[block]
    targets = load_targets(ensure_targets(task, clips, cache), task.name)
    videos = VIEWS[task.view](ensure_videos(clips, cache).load_all()[1])  # (N, T, H, W, 3) uint8, in memory
    latents = ensure_features(backbone.encoder, clips, task.view, [0], 0.0, 0, cache,
                              dtype=torch.float32)[0].load_all()[1]  # (N, T', H', W', C), in memory
    total = plan.warmup_steps + repeats * plan.probe_steps
    cfg = ProbeConfig.preset("tiny").replace(batch_size=plan.probe_batch, steps=total,
                                             warmup_steps=min(20, total // 4))

    def pixels(video: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return backbone.features(video.to(device), index, [block], T, 0)[block]  # (b, T_f, H_f, W_f, C)

    def denoised(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return backbone.features_from_encoded(z.to(device), index, [block], T, 0)[block]  # (b, T_f, H_f, W_f, C)

    loops = {"cached": ProbeLoop(task, cfg, feats.feature_shape, targets,
                                 _train_batches(feats, cfg.batch_size, cfg.seed), device),
             "recompute": ProbeLoop(task, cfg, feats.feature_shape, targets,
                                    recomputed_batches(pixels, videos, cfg.batch_size, cfg.seed), device),
             "recompute-latents": ProbeLoop(task, cfg, feats.feature_shape, targets,
                                            recomputed_batches(denoised, latents, cfg.batch_size, cfg.seed), device)}
    for loop in loops.values():
        loop.run(plan.warmup_steps)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in tqdm(range(repeats), desc="probe steps", unit="rep"):
        for name, loop in loops.items():  # interleaved
            times[name].append(timed(partial(loop.run, plan.probe_steps), device)[0] / plan.probe_steps)
    cached, recompute, latent = (statistics.median(times[k]) for k in ("cached", "recompute", "recompute-latents"))
    ratio = recompute / cached
    cache_row = {"task": TASK, "model": "walt-tiny", "block": block, "t": T, "batch": cfg.batch_size,
                 "clips": len(clips), "steps": plan.probe_steps, "feature_shape": list(feats.feature_shape),
                 "cached_s": spread(times["cached"]), "recompute_s": spread(times["recompute"]),
                 "recompute_latents_s": spread(times["recompute-latents"]), "ratio": ratio,
                 "ratio_latents": latent / cached, "goal": GOAL, "meets_goal": ratio >= GOAL}
    return cache_row


def _ms(s: dict[str, float]) -> str:
    return f"{1e3 * s['median']:.1f} ({1e3 * s['min']:.1f}-{1e3 * s['max']:.1f})"


def _rate(n: int, s: dict[str, float]) -> str:
    return f"{n / s['median']:.1f} ({n / s['max']:.1f}-{n / s['min']:.1f})"


def print_table(result: dict[str, Any]) -> None:
    print(f"device {result['device']} ({result['device_name']}), torch {result['torch']}, {result['threads']} "
          f"threads, fp32 1024^3 matmul {result['peak_gflops']:.0f} GFLOP/s; t = {result['t']:g}; median "
          f"(min-max) of {result['repeats']} interleaved repetitions")
    head = (f"{'model':<11}{'world, clip':<15}{'denoiser':>11}{'B':>4}{'n':>5}{'render':>20}{'first, block B':>20}"
            f"{'block B (latents)':>20}{'all blocks, 1 pass':>20}")
    print("\nextraction, clips/s (ensure_features into a fresh cache; B: the one block; latents: tokenizer latents "
          "cached)\n" + head + "\n" + "-" * len(head))
    for r in result["extraction"]:
        clip, n = f"{r['world']} " + "x".join(map(str, r["clip"])), r["clips"]
        print(f"{r['model']:<11}{clip:<15}{r['params']:>11,}{r['block']:>4}{n:>5}{_rate(n, r['render_s']):>20}"
              f"{_rate(n, r['first_s']):>20}{_rate(n, r['one_s']):>20}{_rate(n, r['every_s']):>20}")
    c = result["cache"]
    print(f"\nprobe step, ms ({c['task']}, one-rate ProbeBank, batch {c['batch']}, {c['model']} block {c['block']}, "
          f"features {'x'.join(map(str, c['feature_shape']))})")
    print(f"  cached features                 {_ms(c['cached_s']):>24}")
    print(f"  recomputed (tokenizer+denoiser) {_ms(c['recompute_s']):>24}   x{c['ratio']:.1f} the cached step "
          f"(goal x{c['goal']:g}: {'met' if c['meets_goal'] else 'NOT met'})")
    print(f"  recomputed from cached latents  {_ms(c['recompute_latents_s']):>24}   x{c['ratio_latents']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long dry run of every measurement (CI)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    device = torch.device(args.device)
    plan = TINY if args.tiny else FULL
    peak = peak_gflops(device)
    with tempfile.TemporaryDirectory(prefix="bench_features-") as tmp:
        root = Path(tmp)
        backbones = {name: untrained_walt(name, root / name, device) for name in plan.extract_clips}
        extraction = bench_extraction(backbones, plan, device, args.repeats, root)
        cache = bench_probes(*backbones["walt-tiny"], plan, device, args.repeats, root)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    result = {"benchmark": "bench_features", "torch": torch.__version__, "device": str(device), "device_name": name,
              "threads": torch.get_num_threads(), "peak_gflops": peak, "repeats": args.repeats, "tiny": args.tiny,
              "t": T, "extraction": extraction, "cache": cache}
    if not all(math.isfinite(v) and v > 0 for v in _seconds(result)):
        raise RuntimeError(f"a timing is not a positive finite number: {sorted(_seconds(result))}")
    print_table(result)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


def _seconds(node: Any, key: str = "") -> list[float]:
    """Every timing in a result: the values of ``*_s`` spreads and the ``*_per_s`` rates."""
    if isinstance(node, dict):
        if key.endswith("_s"):
            return [float(v) for v in node.values()]
        return [v for k, child in node.items() for v in _seconds(child, k)]
    if isinstance(node, list):
        return [v for child in node for v in _seconds(child, key)]
    return [float(node)] if key.endswith("_per_s") else []


if __name__ == "__main__":
    main()
