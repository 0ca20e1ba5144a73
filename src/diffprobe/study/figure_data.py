"""The series the report's figures and full table draw, from a study's averaged results (:mod:`report_data`) and
each backbone's headline (:mod:`headline`): Figure 1's relative bars and summary sentences, Figure 5's sweep
curves, the model-size / training-budget points, and the full table's rows."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffprobe.errors import FileProblem
from diffprobe.study.formatting import fmt_num, fmt_pct
from diffprobe.study.report_data import Key, Stat, StudyData, measure_labels
from diffprobe.study.report_tasks import (
    CONTROLS,
    HIGHER_IS_BETTER,
    IMAGE,
    PIXELS,
    PRIOR,
    TASK_METRICS,
    higher_is_better,
    margin_z,
    primary_metric,
    relative_change,
    relative_percent,
)

# --- Figure 1: video vs image ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bar:
    """One backbone's primary metric on one task, relative to the reference (image twin) in percent."""

    task: str
    metric: str
    backbone: str
    block: int
    t: float
    stat: Stat
    reference: Stat
    percent: float  # relative_percent(stat.mean, reference.mean)
    lo: float  # the worst replicate, relative to reference.mean
    hi: float  # the best replicate, relative to reference.mean
    se: float = math.nan  # the metric's standard error over test clips (mean over replicates); NaN: not stored
    dataset: str = ""  # the dataset's label


def main_backbones(data: StudyData) -> list[str]:
    """Backbones of the main comparison of trained probes: all but the model-size variants (names with ``@``) and
    the training-free matcher's cells (the report's matching section shows those)."""
    return [b for b in data.backbones if "@" not in b and not data.is_matcher(b)]


def relative_bars(data: StudyData, heads: Mapping[str, tuple[int, float]],
                  reference: str = IMAGE) -> tuple[list[Bar], list[str]]:
    """Figure 1: each main backbone's primary metric per task and dataset at its headline and final checkpoint,
    relative to ``reference`` on the same task and dataset (also at its headline and final checkpoint). Returns
    the bars and notes on what is missing."""
    if reference not in data.backbones:
        return [], [f"no {reference} results: the video-vs-image comparison needs the image twin as reference "
                    f"(backbones present: {', '.join(data.backbones)})"]
    bars, notes = [], []
    for task, ds in data.measures():
        if task not in TASK_METRICS:
            notes.append(f"task {task!r} has no known primary metric; it appears only in the full table")
            continue
        name = data.measure(task, ds)
        metric = primary_metric(task)
        hib = higher_is_better(metric)
        rb, rt = heads[reference]
        ref = data.get(reference, data.final_step(reference), rb, rt, task, ds, metric)
        if ref is None:
            notes.append(f"{name}: {reference} has no {metric} at its headline (block {rb}, t {fmt_num(rt)})")
            continue
        for b in main_backbones(data):
            blk, t = heads[b]
            st = data.get(b, data.final_step(b), blk, t, task, ds, metric)
            if st is None:
                if any(k.backbone == b and k.task == task and k.dataset == ds for k in data.stats):
                    notes.append(f"{name}: {b} has no {metric} at its headline (block {blk}, t {fmt_num(t)})")
                continue
            ends = [relative_percent(v, ref.mean, hib) for v in (st.lo, st.hi)]
            se = data.get(b, data.final_step(b), blk, t, task, ds, f"{metric}_se")
            bars.append(Bar(task, metric, b, blk, t, st, ref, relative_percent(st.mean, ref.mean, hib),
                            min(ends), max(ends), math.nan if se is None else se.mean, ds))
    return bars, notes


def summary_sentences(bars: Iterable[Bar], video: str, image: str = IMAGE) -> list[str]:
    """One sentence per task (and dataset, where a task has several) comparing ``video`` with ``image`` (and the
    controls), computed from the bars."""
    bars = list(bars)
    names = measure_labels((b.task, b.dataset) for b in bars)
    by_task: dict[str, dict[str, Bar]] = defaultdict(dict)
    for bar in bars:
        by_task[names[bar.task, bar.dataset]][bar.backbone] = bar
    out = []
    for task, bs in by_task.items():
        if video not in bs or image not in bs:
            continue
        v, i = bs[video], bs[image]
        direction = "higher" if higher_is_better(v.metric) else "lower"
        if math.isnan(v.percent):
            verdict = f"{video} vs {image} on {task}: undefined ratio"
        elif v.percent > 100:
            verdict = f"video beats image on {task} by {v.percent - 100:+.1f}%"
        elif v.percent < 100:
            verdict = f"image beats video on {task}: video reaches {v.percent:.1f}% of image"
        else:
            verdict = f"video and image tie on {task}"
        detail = (f"{v.metric} {fmt_num(v.stat.mean)} vs {fmt_num(i.stat.mean)}, {direction} is better; "
                  f"n = {v.stat.n} vs {i.stat.n}")
        z = margin_z(v.stat.mean, i.stat.mean, v.se, i.se, higher_is_better(v.metric))
        if not math.isnan(z):  # NaN: no standard errors stored
            detail += f"; {z:+.1f} test-set standard errors" + (", within the noise" if abs(z) < 2 else "")
        controls = [f"{c} {fmt_pct(bs[c].percent)}" for c in CONTROLS if c in bs]
        tail = f"; controls relative to image: {', '.join(controls)}" if controls else ""
        warn = ""
        if PRIOR in bs and not any(bs[b].percent > bs[PRIOR].percent for b in (video, image)):
            warn = (f" Neither twin beats the no-information prior on {task} ({v.metric} "
                    f"{fmt_num(bs[PRIOR].stat.mean)}): this difference measures nothing.")
        if PRIOR in bs and PIXELS in bs and not bs[PIXELS].percent > bs[PRIOR].percent:
            warn += (f" The pixels control does not beat the prior ({fmt_num(bs[PIXELS].stat.mean)}): the "
                     f"readout cannot read {task} from the raw clip at this budget, so a backbone at the prior says "
                     f"nothing about the task, and one above it has made the task readable.")
        out.append(f"{verdict} ({detail}){tail}.{warn}")
    return out


# --- Figure 5: sweeps ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Curve:
    """A backbone's primary metric on one task along one axis (``t`` or ``block``), the other fixed at its
    headline value."""

    task: str
    metric: str
    backbone: str
    axis: str  # "t" or "block"
    fixed: float  # the other coordinate's headline value
    xs: tuple[float, ...]
    stats: tuple[Stat, ...]
    headline_x: float
    dataset: str = ""  # the dataset's label

    @property
    def headline_stat(self) -> Stat:
        return self.stats[self.xs.index(self.headline_x)]

    def relative_changes(self) -> list[float]:
        """Each point's relative change (%) from the curve's own headline value; positive = better."""
        hib = higher_is_better(self.metric)
        h = self.headline_stat.mean
        return [relative_change(s.mean, h, hib) for s in self.stats]


def sweep_curves(data: StudyData, heads: Mapping[str, tuple[int, float]], backbones: Sequence[str] | None = None,
                 tasks: Sequence[str] | None = None) -> tuple[list[Curve], list[str]]:
    """Figure 5: for every known task (and dataset) and main backbone (or each of ``tasks`` and ``backbones``), the
    primary metric vs t (at the headline block) and vs block (at the headline t), at the final checkpoint. A curve
    that lacks its headline point is left out (it has nothing to be relative to) and named in the returned notes."""
    curves, notes = [], []
    for task, ds in data.measures():
        if task not in TASK_METRICS or (tasks is not None and task not in tasks):
            continue
        metric = primary_metric(task)
        for b in main_backbones(data) if backbones is None else backbones:
            blk, t = heads[b]
            step = data.final_step(b)
            keys = [k for k in data.stats if k.backbone == b and k.step == step and k.task == task
                    and k.dataset == ds and k.metric == metric]
            for axis, fixed, head_x in (("t", blk, t), ("block", t, blk)):
                on = sorted((k for k in keys if (k.block if axis == "t" else k.t) == fixed),
                            key=lambda k: k.t if axis == "t" else k.block)
                if not on:
                    continue
                xs = tuple(float(k.t if axis == "t" else k.block) for k in on)
                if float(head_x) not in xs:
                    notes.append(f"{data.measure(task, ds)}: {b} vs {axis} left out, no {metric} at its headline "
                                 f"(block {blk}, t {fmt_num(t)})")
                    continue
                curves.append(Curve(task, metric, b, axis, float(fixed), xs, tuple(data.stats[k] for k in on),
                                    float(head_x), ds))
    return curves, notes


# --- model size and training budget ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScalePoint:
    """Representation quality of one (backbone, checkpoint step), with its generation quality when known."""

    backbone: str
    mode: str
    step: int
    model: str | None  # generation.json's "model" field
    frechet: float | None  # Fréchet distance (lower is better)
    quality: float  # mean over tasks of relative_percent(primary metric, image twin at its final checkpoint)
    per_task: dict[str, float]  # StudyData.measure(task, dataset) -> relative percent, in the report's task order


def read_generation(rows: Any, source: Path) -> list[dict[str, Any]]:
    """Validate generation.json rows ({"backbone", "mode", "model", "checkpoint_step", "frechet_distance"})."""
    need = {"backbone", "mode", "model", "checkpoint_step", "frechet_distance"}
    if not isinstance(rows, list):
        raise FileProblem(f"{source}: expected a list of rows, got {type(rows).__name__}")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or need - set(r):
            missing = sorted(need - set(r)) if isinstance(r, dict) else sorted(need)
            raise FileProblem(f"{source}: row {i} lacks {missing}")
    return rows


def scale_points(data: StudyData, heads: Mapping[str, tuple[int, float]], generation: list[dict[str, Any]],
                 reference: str = IMAGE) -> tuple[list[ScalePoint], list[str]]:
    """One point per (backbone, checkpoint step) that has every (task, dataset) the reference has at its final
    checkpoint.

    Each task's primary metric (at the backbone's headline (block, t)) is taken relative to the reference on the
    same dataset at its final checkpoint and headline; the point's quality is the mean over tasks. Returns the
    points and notes.
    """
    if reference not in data.backbones:
        return [], [f"no {reference} results to normalise against"]
    rb, rt = heads[reference]
    rstep = data.final_step(reference)
    ref = {(task, ds): data.get(reference, rstep, rb, rt, task, ds, primary_metric(task))
           for task, ds in data.measures() if task in TASK_METRICS}
    ref = {m: s for m, s in ref.items() if s is not None}
    gen = {(r["backbone"], int(r["checkpoint_step"])): r for r in generation}
    points, notes = [], []
    for b in data.backbones:
        blk, t = heads[b]
        for step in data.steps(b):
            per_task = {}
            for (task, ds), rs in ref.items():
                st = data.get(b, step, blk, t, task, ds, primary_metric(task))
                if st is not None:
                    per_task[data.measure(task, ds)] = relative_percent(st.mean, rs.mean,
                                                                        higher_is_better(primary_metric(task)))
            if len(per_task) != len(ref):
                missing = [data.measure(*m) for m in ref if data.measure(*m) not in per_task]
                notes.append(f"{b} step {step}: left out, no headline result for {', '.join(missing)}")
                continue
            g = gen.get((b, step))
            points.append(ScalePoint(b, data.mode(b), step, None if g is None else str(g["model"]),
                                     None if g is None else float(g["frechet_distance"]),
                                     statistics.fmean(per_task.values()), per_task))
    matched = {(p.backbone, p.step) for p in points}
    for key in sorted(set(gen) - matched):
        notes.append(f"generation.json row {key[0]} step {key[1]} has no matching probe results")
    return points, notes


# --- full table ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TableRow:
    key: Key
    stat: Stat
    best: bool  # best mean of its (task, dataset, metric) over the whole study
    headline: bool  # at its backbone's headline (block, t) and final checkpoint


def table_rows(data: StudyData, heads: Mapping[str, tuple[int, float]]) -> list[TableRow]:
    """Every cell, ordered by task, dataset, metric, backbone, step, block, t; best per (task, dataset, metric)
    flagged."""
    border = {b: i for i, b in enumerate(data.backbones)}
    torder = {t: i for i, t in enumerate(data.tasks)}

    def metric_rank(k: Key) -> tuple[int, str]:
        known = TASK_METRICS.get(k.task, ())
        return (known.index(k.metric), "") if k.metric in known else (len(known), k.metric)

    keys = sorted(data.stats, key=lambda k: (torder[k.task], k.dataset, metric_rank(k), border[k.backbone], k.step,
                                             k.block, k.t))
    best: dict[tuple[str, str, str], float] = {}
    for k in keys:
        if k.metric not in HIGHER_IS_BETTER:  # no known direction: no best is marked for this metric
            continue
        hib = HIGHER_IS_BETTER[k.metric]
        m = data.stats[k].mean
        cur = best.get((k.task, k.dataset, k.metric))
        if cur is None or (m > cur if hib else m < cur):
            best[(k.task, k.dataset, k.metric)] = m
    return [TableRow(k, data.stats[k], best.get((k.task, k.dataset, k.metric)) == data.stats[k].mean,
                     (k.block, k.t) == heads[k.backbone] and k.step == data.final_step(k.backbone)) for k in keys]
