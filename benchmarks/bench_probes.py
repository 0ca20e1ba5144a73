"""Probe training on cached features: one probe, twelve probes one after another, and twelve probes as one bank.

The features are random, of the default study's real shapes (untrained or trained alike, ``walt-tiny`` block
features of tiny clips: clip view 5x4x4x128, frame0 view 1x4x4x128), written straight into a temp FeatureCache as
the extraction writes them (2048 training clips in 8 shards of 256, fp16); the targets are those of Probe World
``tiny`` clips (``compute_targets``; a few hundred clips rendered, repeated to 2048 rows). Every probe is the
``tiny`` probe preset (``ProbeConfig.preset("tiny")``: batch 32, readout width 64, train_queries 16) and every step
is the library's step loop, ``_train_bank``'s (the warm-up + cosine schedule by ``lr_at``, one ``_train_batches``
stream per distinct (features, seed), ``_batch_targets`` and the task's ``training_batch`` per stream, ``_stack`` to
``(P, B, ...)``, ``ProbeBank.step``). Per task, milliseconds per step of:

1. ``one``: one probe (a bank of 1), the reference;
2. ``sequential``: the named peer, 12 probes (3 seeds x 4 learning rates) trained one after another as 12 banks
   of 1, each on its own batch stream (what the study did before the bank: 12 x one probe);
3. ``seeds x rates``: a bank of 12 = 3 seeds x 4 learning rates (2e-3, 1e-3, 4e-3, 5e-4), 3 batch streams;
4. ``backbones x seeds``: a bank of 12 = 4 backbones (4 feature sets of one shape) x 3 seeds, 12 batch streams.

Each row gives its cost as a multiple of one probe's step (the issue's bar for a bank of 12: at most 4x), its
speed-up over the sequential peer, and its FLOP/s: the FLOPs of one real ``ProbeBank.step`` (forward + backward,
counted by ``torch.utils.flop_counter.FlopCounterMode`` as it runs; the AdamW update counts none) over the measured
step time, as a share of the machine's fp32 1024^3 matmul peak (the issue's bar: at least 50%). Vectorising must not
change the FLOPs: a bank of P counts P times one probe's.

Every measurement runs ``--repeats`` times, interleaved with its peers; the table gives the median and the spread
from the fastest to the slowest repetition. ``--tiny`` is a seconds-long dry run of every measurement (few clips,
batch 4, few steps). On a CPU that other jobs share, ``--threads 1`` keeps torch's threads from waiting on each
other (two threads on two busy cores ran a step 100x slower here).

    python benchmarks/bench_probes.py [--device cpu] [--tiny] [--repeats 3] [--tasks action,point_tracking,depth]
                                      [--threads N] [--out benchmarks/bench_probes.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import cpu_name, peak_gflops  # benchmarks/_common.py (the script's folder is on sys.path)
from bench_features import spread, timed
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from diffprobe.data import CATEGORIES, MOTIONS, ProbeWorld, ProbeWorldConfig
from diffprobe.features.cache import FeatureCache, FeatureKey, FeatureSet
from diffprobe.readouts import Member, ProbeBank
from diffprobe.tasks import Task, TaskContext, UnknownTask, make_task
from diffprobe.tasks.probe_config import ProbeConfig
from diffprobe.tasks.probing import _batch_targets, _stack, _train_batches
from diffprobe.tasks.targets import Targets, compute_targets
from diffprobe.train.optim import lr_at
from diffprobe.utils.io import atomic_write_json

#: the default study's block features per view (walt-tiny on 9x32x32 clips: 5 x 8 x 8 latents, patch 2, width 128)
SHAPES: dict[str, tuple[int, int, int, int]] = {"clip": (5, 4, 4, 128), "frame0": (1, 4, 4, 128)}
TASKS = ("action", "point_tracking", "depth")  #: measured by default (all clip view)
RATES = (2e-3, 1e-3, 4e-3, 5e-4)  #: the first is the tiny probe preset's
SEEDS = (0, 1, 2)
BACKBONES = 4  #: feature sets of one shape in the backbones x seeds bank
COST_BAR = 4.0  #: a bank of 12 costs at most this many one-probe steps
MFU_BAR = 0.5  #: and runs at least at this share of the fp32 matmul peak


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much each measurement runs."""

    clips: int  #: training clips of every feature set
    shard: int  #: clips per cache shard
    rendered: int  #: Probe World clips whose targets are computed (repeated to ``clips`` rows)
    batch: int
    steps: int  #: probe steps of one repetition
    warmup_steps: int  #: probe steps run once before the repetitions (the first one counted for FLOPs)


FULL = Plan(clips=2048, shard=256, rendered=256, batch=32, steps=20, warmup_steps=3)
TINY = Plan(clips=32, shard=16, rendered=8, batch=4, steps=1, warmup_steps=1)


@dataclasses.dataclass(frozen=True)
class Bank:
    """One measured configuration: ``banks`` trained one after another (one bank for a vectorised row), each a list
    of ``(feature set index, seed, learning rate)`` probes."""

    name: str
    banks: list[list[tuple[int, int, float]]]

    @property
    def probes(self) -> int:
        return sum(len(b) for b in self.banks)


def configurations() -> list[Bank]:
    """The four rows of every task, the reference first."""
    grid = [(0, seed, lr) for seed in SEEDS for lr in RATES]
    return [Bank("one", [[(0, SEEDS[0], RATES[0])]]),
            Bank("sequential", [[probe] for probe in grid]),
            Bank("seeds x rates", [grid]),
            Bank("backbones x seeds", [[(b, seed, RATES[0]) for b in range(BACKBONES) for seed in SEEDS]])]


class BankLoop:
    """``_train_bank``'s step loop (schedule, a batch stream per distinct (features, seed), task targets, ``_stack``,
    ``ProbeBank.step``) for one bank of ``probes``: ``(feature set, seed, learning rate)`` each."""

    def __init__(self, task: Task, cfg: ProbeConfig, probes: Sequence[tuple[FeatureSet, int, float]],
                 targets: Targets, baseline: torch.Tensor | None, device: torch.device) -> None:
        t_f, h_f, w_f, c = probes[0][0].feature_shape
        members = [Member(seed, lr, wd, cfg.grad_clip) for _, seed, lr in probes for wd in cfg.readout.weight_decays]
        self.bank = ProbeBank(lambda: task.make_probe(cfg.readout, c, (t_f, h_f, w_f)).set_baseline(baseline),
                              members, task.query_inputs, task.loss).to(device)
        self.keys = list(dict.fromkeys((str(feats.path), seed) for feats, seed, _ in probes))
        sources = {(str(feats.path), seed): feats for feats, seed, _ in probes}
        self.streams = {k: _train_batches(sources[k], cfg.batch_size, k[1]) for k in self.keys}
        self.samplers = {k: torch.Generator().manual_seed(k[1]) for k in self.keys}
        self.pick = torch.tensor([self.keys.index((str(feats.path), seed)) for feats, seed, _ in probes
                                  for _ in cfg.readout.weight_decays])  # (P,) probe -> its stream
        self.task, self.cfg, self.targets, self.device = task, cfg, targets, device
        self.done = 0

    def _batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The next step's features ``(P, B, T_f, H_f, W_f, C)`` and targets ``(P, B, ...)``, the schedule set."""
        cfg = self.cfg
        self.bank.set_lr_scale(lr_at(self.done % cfg.steps, base_lr=1.0, warmup_steps=cfg.warmup_steps,
                                     total_steps=cfg.steps, min_lr_ratio=cfg.min_lr_ratio))
        feats, tgts = [], []
        for k in self.keys:
            index, f = next(self.streams[k])  # (B,), (B, T_f, H_f, W_f, C)
            feats.append(f)
            tgts.append(self.task.training_batch(_batch_targets(self.targets, index, self.device), cfg.train_queries,
                                                 self.samplers[k]))
        batch = {name: _stack([t[name] for t in tgts], self.pick, self.device) for name in tgts[0]}
        return _stack(feats, self.pick, self.device), batch

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.bank.step(*self._batch())
            self.done += 1

    def count_flops(self) -> int:
        """The FLOPs of one real step of the bank (forward + backward + update), counted as it trains."""
        feats, batch = self._batch()
        with FlopCounterMode(display=False) as counter:
            self.bank.step(feats, batch)
        self.done += 1
        return counter.get_total_flops()


def feature_sets(cache: FeatureCache, plan: Plan, shape: tuple[int, ...], view: str) -> list[FeatureSet]:
    """``BACKBONES`` feature sets of random fp16 features of ``shape``, ``plan.clips`` clips in shards, cached."""
    out = []
    for b in range(BACKBONES):
        key = FeatureKey(f"backbone{b}", "probeworld-tiny", "train", view, 4, 200.0, 0)
        if not cache.is_complete(key):
            gen = torch.Generator().manual_seed(b)
            for s, lo in enumerate(range(0, plan.clips, plan.shard)):
                n = min(plan.shard, plan.clips - lo)
                cache.write_shard(key, s, torch.arange(lo, lo + n),
                                  torch.randn(n, *shape, generator=gen).to(torch.float16))
            cache.mark_complete(key, plan.clips, plan.shard, shape, "float16")
        out.append(cache.open(key))
    return out


def world_targets(tasks: Sequence[Task], world: ProbeWorldConfig, plan: Plan) -> dict[str, Targets]:
    """Every task's targets of ``plan.rendered`` Probe World clips, repeated to ``plan.clips`` rows."""
    clips = ProbeWorld(world, "train").batch(list(range(plan.rendered)))
    targets = compute_targets(tasks, clips, plan.rendered, progress=False)
    rows = np.arange(plan.clips) % plan.rendered
    return {name: {k: v[rows] for k, v in tgt.items()} for name, tgt in targets.items()}


def bench_task(task: Task, targets: Targets, sets: list[FeatureSet], plan: Plan, repeats: int,
               device: torch.device, peak: float) -> list[dict[str, Any]]:
    """The rows of one task: seconds per step of every configuration, interleaved, and FLOPs per step."""
    cfg = ProbeConfig.preset("tiny").replace(batch_size=plan.batch)
    prior = task.baseline(targets)  # every probe starts at the task's prior, as _train_bank sets it
    baseline = None if prior is None else torch.from_numpy(prior)
    configs = configurations()
    loops = {c.name: [BankLoop(task, cfg, [(sets[f], seed, lr) for f, seed, lr in bank], targets, baseline, device)
                      for bank in c.banks] for c in configs}
    flops = {name: sum(loop.count_flops() for loop in group) for name, group in loops.items()}
    for group in loops.values():
        for loop in group:
            loop.run(plan.warmup_steps - 1)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in tqdm(range(repeats), desc=task.name, unit="rep"):
        for name, group in loops.items():  # interleaved; a sequential row's banks one after another
            times[name].append(sum(timed(lambda loop=loop: loop.run(plan.steps), device)[0] for loop in group)
                               / plan.steps)
    one, sequential = (statistics.median(times[k]) for k in ("one", "sequential"))
    rows = []
    for c in configs:
        med = statistics.median(times[c.name])
        row: dict[str, Any] = {
            "task": task.name, "view": task.view, "row": c.name, "probes": c.probes, "banks": len(c.banks),
            "streams": sum(len(loop.keys) for loop in loops[c.name]), "step_s": spread(times[c.name]),
            "vs_one": med / one, "speedup_vs_sequential": sequential / med, "flops": flops[c.name],
            "gflops_per_s": flops[c.name] / med / 1e9, "mfu": flops[c.name] / med / 1e9 / peak}
        if len(c.banks) == 1 and c.probes > 1:  # a vectorised bank: the bars
            row["meets_cost_bar"] = row["vs_one"] <= COST_BAR
            row["meets_mfu_bar"] = row["mfu"] >= MFU_BAR
        rows.append(row)
    return rows


def _ms(s: dict[str, float]) -> str:
    return f"{1e3 * s['median']:.1f} ({1e3 * s['min']:.1f}-{1e3 * s['max']:.1f})"


def print_table(result: dict[str, Any]) -> None:
    print(f"device {result['device']} ({result['device_name']}), torch {result['torch']}, {result['threads']} "
          f"threads, fp32 1024^3 matmul {result['peak_gflops']:.0f} GFLOP/s; median (min-max) of "
          f"{result['repeats']} interleaved repetitions of {result['steps']} steps")
    print(f"tiny probes (batch {result['batch']}, readout width {result['width']}) on cached fp16 features, "
          f"{result['clips']} clips in shards of {result['shard']}; bars for a bank of 12: <= x{COST_BAR:g} one "
          f"probe, >= {MFU_BAR:.0%} of the matmul peak")
    head = (f"{'task':<16}{'features':<11}{'row':<19}{'P':>3}{'streams':>8}{'ms/step':>24}{'x one':>8}"
            f"{'vs seq':>8}{'MFLOP/step':>12}{'GFLOP/s':>9}{'% peak':>8}  bars")
    print("\n" + head + "\n" + "-" * len(head))
    for r in result["rows"]:
        bars = ""
        if "meets_cost_bar" in r:
            bars = (f"cost {'met' if r['meets_cost_bar'] else 'NOT met'}, "
                    f"peak {'met' if r['meets_mfu_bar'] else 'NOT met'}")
        shape = "x".join(map(str, result["shapes"][r["view"]]))
        print(f"{r['task']:<16}{shape:<11}{r['row']:<19}{r['probes']:>3}{r['streams']:>8}{_ms(r['step_s']):>24}"
              f"{r['vs_one']:>7.2f}x{r['speedup_vs_sequential']:>7.2f}x{r['flops'] / 1e6:>12.1f}"
              f"{r['gflops_per_s']:>9.1f}{r['mfu']:>8.0%}  {bars}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long dry run of every measurement (CI)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--threads", type=int, default=0, help="torch's CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    plan = TINY if args.tiny else FULL
    world = ProbeWorldConfig.preset("tiny")
    context = TaskContext(frames=world.frames, height=world.height, width=world.width,
                          label_spaces={"label": tuple(CATEGORIES), "action": tuple(MOTIONS)},
                          max_objects=world.max_objects)
    try:
        tasks = [make_task(name, context) for name in args.tasks.split(",")]
    except UnknownTask as e:
        parser.error(f"--tasks: {e}")
    peak = peak_gflops(device)
    targets = world_targets(tasks, world, plan)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_probes-") as tmp:
        cache = FeatureCache(Path(tmp))
        for task in tasks:
            sets = feature_sets(cache, plan, SHAPES[task.view], task.view)
            rows += bench_task(task, targets[task.name], sets, plan, args.repeats, device, peak)
    cfg = ProbeConfig.preset("tiny")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    result = {"benchmark": "bench_probes", "torch": torch.__version__, "device": str(device), "device_name": name,
              "threads": torch.get_num_threads(), "peak_gflops": peak, "repeats": args.repeats, "tiny": args.tiny,
              "steps": plan.steps, "batch": plan.batch, "width": cfg.readout.width, "clips": plan.clips,
              "shard": plan.shard, "rendered": plan.rendered, "learning_rates": list(RATES), "seeds": list(SEEDS),
              "backbones": BACKBONES, "shapes": {v: list(s) for v, s in SHAPES.items()},
              "bars": {"cost": COST_BAR, "mfu": MFU_BAR}, "rows": rows}
    seconds = [v for r in rows for v in r["step_s"].values()]
    if not all(math.isfinite(v) and v > 0 for v in seconds):
        raise RuntimeError(f"a timing is not a positive finite number: {sorted(seconds)}")
    print_table(result)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
