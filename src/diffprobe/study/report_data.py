"""The report's data: results-store rows averaged over seeds, each backbone's headline (block, t), and the derived
series every figure draws (relative bars, sweeps, model-size / training-budget points).

A *cell* is everything of a store row but its seeds: backbone, mode, checkpoint step, block, t, task, dataset,
metric, and the backbone's identity, ensemble size, clips per role and probe config. A *replicate* is one (noise
seed, probe seed) pair; every statistic is over the replicates of one cell, never over datasets or configs.

Cells are labelled for display: a dataset by its spec (``{role: spec}`` recorded in the store beside its hash; the
hash where no spec was recorded), a backbone by its display name, qualified (``name[...]``) where one name covers
several modes, or several identities, ensembles, clip counts or probe configs (then the latest of those keeps the
plain name and the others name what differs).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffprobe.data.splits import ROLES
from diffprobe.errors import FileProblem, InputError, MissingFile
from diffprobe.study.report_tasks import (
    CONTROLS,
    HIGHER_IS_BETTER,
    IMAGE,
    PIXELS,
    PRIOR,
    TASK_METRICS,
    backbone_order,
    higher_is_better,
    margin_z,
    primary_metric,
    relative_change,
    relative_percent,
    task_order,
)
from diffprobe.study.store import ResultsStore


@dataclass(frozen=True)
class Key:
    """One aggregated cell: everything but the seeds (the backbone label carries its identity, ensemble, clips and
    probe config where they vary; see the module docstring)."""

    backbone: str
    mode: str
    step: int
    block: int
    t: float
    task: str
    dataset: str  #: the dataset's label (see :func:`dataset_labels`)
    metric: str


@dataclass(frozen=True)
class Stat:
    """The replicate values of one cell and their summary (std is the sample std, 0 for one value)."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)


@dataclass(frozen=True)
class DataInfo:
    """A dataset of the store: its hash (``Cell.dataset``) and the spec of each role (None: not recorded)."""

    digest: str
    roles: dict[str, str] | None


@dataclass
class StudyData:
    """All of one study's results, averaged over replicates."""

    study: str
    stats: dict[Key, Stat]
    config_hashes: list[str]
    first_time: str
    last_time: str
    n_rows: int
    notes: list[str] = field(default_factory=list)
    datasets: dict[str, DataInfo] = field(default_factory=dict)  #: label -> what it names

    @property
    def backbones(self) -> list[str]:
        return backbone_order({k.backbone for k in self.stats})

    @property
    def tasks(self) -> list[str]:
        return task_order({k.task for k in self.stats})

    def task_datasets(self, task: str) -> list[str]:
        """The labels of the datasets ``task`` was measured on, sorted."""
        return sorted({k.dataset for k in self.stats if k.task == task})

    def measures(self) -> list[tuple[str, str]]:
        """Every measured (task, dataset), tasks in the report's order."""
        return [(task, ds) for task in self.tasks for ds in self.task_datasets(task)]

    def measure(self, task: str, dataset: str) -> str:
        """How (task, dataset) is named: the task alone when it was measured on one dataset."""
        return measure_labels(self.measures())[task, dataset]

    def mode(self, backbone: str) -> str:
        modes = {k.mode for k in self.stats if k.backbone == backbone}
        if len(modes) != 1:
            raise ValueError(f"backbone {backbone!r} has modes {sorted(modes)}; expected exactly one")
        return modes.pop()

    def steps(self, backbone: str) -> list[int]:
        return sorted({k.step for k in self.stats if k.backbone == backbone})

    def final_step(self, backbone: str) -> int:
        """The backbone's last checkpoint step (its fully trained model)."""
        return self.steps(backbone)[-1]

    def get(self, backbone: str, step: int, block: int, t: float, task: str, dataset: str, metric: str
            ) -> Stat | None:
        """The cell's statistic, or None when it was not measured."""
        return self.stats.get(Key(backbone, self.mode(backbone), step, block, t, task, dataset, metric))


def measure_labels(pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """``(task, dataset) -> label``: the task alone where it appears with one dataset, else ``task on dataset``."""
    pairs = list(dict.fromkeys(pairs))
    count = Counter(task for task, _ in pairs)
    return {(task, ds): task if count[task] == 1 else f"{task} on {ds}" for task, ds in pairs}


def dataset_labels(digests: Iterable[str], specs: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """``{hash: label}``: a dataset's spec when every role used the same one, else ``train=A, val=B, test=C``;
    ``dataset HASH`` when no spec was recorded; the hash appended where two datasets would share a label."""
    labels = {}
    for digest in sorted(set(digests)):
        roles = specs.get(digest)
        if not roles:
            labels[digest] = f"dataset {digest}"
            continue
        order = [r for r in ROLES if r in roles] + sorted(set(roles) - set(ROLES))
        values = {roles[r] for r in order}
        labels[digest] = values.pop() if len(values) == 1 else ", ".join(f"{r}={roles[r]}" for r in order)
    shared = Counter(labels.values())
    return {d: f"{lab} ({d})" if shared[lab] > 1 else lab for d, lab in labels.items()}


def load_study(store_path: Path, study: str | None = None,
               keep: set[tuple[str, int, int, float, str]] | None = None) -> StudyData:
    """Read ``store_path`` and average one study's rows over replicates.

    ``study`` may be omitted when the store holds a single study; ``keep`` limits the rows to those cells
    ((backbone, step, block, t, task): a study's plan). A missing or empty store, or an ambiguous or absent study,
    raises ``ValueError`` naming the file.
    """
    if not store_path.is_file():
        raise MissingFile(f"{store_path}: no results store (run the study first)")
    with ResultsStore(store_path) as store:
        rows = store.query()
        specs = store.data_specs()
    if not rows:
        raise FileProblem(f"{store_path}: the results store holds no results")
    studies = sorted({r["study"] for r in rows})
    if study is None:
        if len(studies) > 1:
            raise InputError(f"{store_path}: holds several studies {studies}; choose one with --study")
        study = studies[0]
    elif study not in studies:
        raise InputError(f"{store_path}: no study {study!r}; it holds {studies}")
    rows = [r for r in rows if r["study"] == study and (keep is None or (
        r["backbone"], int(r["checkpoint_step"]), int(r["block"]), float(r["t"]), r["task"]) in keep)]
    if not rows:
        raise FileProblem(f"{store_path}: holds no results of the study's plan (run the study first)")
    return aggregate(study, rows, specs)


#: the coordinates of a cell that are neither seeds nor in :class:`Key`, and how a label names a value of each
_SETUP = {"identity": "id {}", "ensemble": "ensemble {}", "clips": "clips {}", "config_hash": "probe config {:.8}"}


def _backbone_labels(rows: list[Mapping[str, Any]]) -> tuple[dict[tuple[Any, ...], str], list[str]]:
    """``(backbone, mode, checkpoint step, *setup) -> label`` and notes (see the module docstring). Setups are
    compared within one checkpoint step: an earlier checkpoint has its own identity and is its own cell already."""
    modes: dict[str, set[str]] = defaultdict(set)
    # (backbone, mode, checkpoint step) -> setup -> its latest time
    setups: dict[tuple[str, str, int], dict[tuple[Any, ...], str]] = defaultdict(dict)
    for r in rows:
        modes[r["backbone"]].add(r["mode"])
        setup = tuple(r[c] for c in _SETUP)
        seen = setups[r["backbone"], r["mode"], int(r["checkpoint_step"])]
        seen[setup] = max(seen.get(setup, ""), r["time"])
    notes = [f"backbone {b!r} was probed in modes {sorted(m)}; shown as {b}[mode]"
             for b, m in sorted(modes.items()) if len(m) > 1]
    labels = {}
    for (name, mode, step), seen in sorted(setups.items()):
        base = [mode] if len(modes[name]) > 1 else []
        latest = max(seen, key=lambda s: (seen[s], s))
        for setup in seen:
            parts = base + [fmt.format(v) for fmt, v, w in zip(_SETUP.values(), setup, latest, strict=True) if v != w]
            labels[(name, mode, step, *setup)] = f"{name}[{', '.join(parts)}]" if parts else name
        if len(seen) > 1:
            plain = f"{name}[{mode}]" if base else name
            notes.append(f"backbone {plain!r} has results of {len(seen)} setups (identity, ensemble, clips or probe "
                         f"config); the latest is shown as {plain}, each other one named by what differs from it")
    return labels, notes


def aggregate(study: str, rows: Iterable[Mapping[str, Any]],
              specs: Mapping[str, Mapping[str, str]] | None = None) -> StudyData:
    """Group store rows by :class:`Key`; ``specs`` (``ResultsStore.data_specs()``) names the datasets."""
    rows = list(rows)
    labels, notes = _backbone_labels(rows)
    data_label = dataset_labels((r["dataset"] for r in rows), specs or {})
    groups: dict[Key, list[float]] = defaultdict(list)
    for r in rows:
        label = labels[(r["backbone"], r["mode"], int(r["checkpoint_step"]), *(r[c] for c in _SETUP))]
        key = Key(label, r["mode"], int(r["checkpoint_step"]), int(r["block"]), float(r["t"]), r["task"],
                  data_label[r["dataset"]], r["metric"])
        groups[key].append(float(r["value"]))
    times = sorted(r["time"] for r in rows)
    datasets = {lab: DataInfo(d, dict((specs or {})[d]) if d in (specs or {}) else None)
                for d, lab in data_label.items()}
    return StudyData(study=study, stats={k: Stat(tuple(v)) for k, v in groups.items()},
                     config_hashes=sorted({r["config_hash"] for r in rows}), first_time=times[0],
                     last_time=times[-1], n_rows=len(rows), notes=notes, datasets=datasets)


# --- headline (block, t) -------------------------------------------------------------------------------------------

def default_headline(data: StudyData, backbone: str) -> tuple[int, float]:
    """The (block, t) at the centre of the backbone's sweep, at its final checkpoint.

    Each measured pair (b, t) scores (#distinct t measured at block b) + (#distinct blocks measured at t); the
    highest score wins, so for a cross-shaped sweep (all t at one block, all blocks at one t) the crossing point
    wins, and a backbone measured at a single pair gets that pair. Ties: more result rows, then lower t, then
    lower block.
    """
    step = data.final_step(backbone)
    keys = [k for k in data.stats if k.backbone == backbone and k.step == step]
    rows = Counter((k.block, k.t) for k in keys for _ in range(data.stats[k].n))
    ts_at_block: dict[int, set[float]] = defaultdict(set)
    blocks_at_t: dict[float, set[int]] = defaultdict(set)
    for b, t in rows:
        ts_at_block[b].add(t)
        blocks_at_t[t].add(b)
    return min(rows, key=lambda p: (-(len(ts_at_block[p[0]]) + len(blocks_at_t[p[1]])), -rows[p], p[1], p[0]))


def headlines(data: StudyData, override: tuple[int, float] | None = None) -> tuple[dict[str, tuple[int, float]],
                                                                                 list[str]]:
    """Headline (block, t) per backbone, and notes; ``override`` applies to every backbone that measured it (one that
    no backbone measured is an :class:`~diffprobe.errors.InputError` listing the points the store holds)."""
    if override is not None:
        held = sorted({(k.block, k.t) for k in data.stats})
        if (override[0], float(override[1])) not in held:
            raise InputError(f"no backbone of study {data.study!r} was measured at block {override[0]}, t "
                             f"{fmt_num(override[1])}; the store holds (block, t) "
                             + ", ".join(f"({b}, {fmt_num(t)})" for b, t in held))
    out, notes = {}, []
    for b in data.backbones:
        own = default_headline(data, b)
        if override is not None:
            step = data.final_step(b)
            measured = {(k.block, k.t) for k in data.stats if k.backbone == b and k.step == step}
            if (override[0], float(override[1])) in measured:
                own = (override[0], float(override[1]))
            else:
                notes.append(f"{b} was not measured at block {override[0]}, t {fmt_num(override[1])}; "
                             f"its own headline (block {own[0]}, t {fmt_num(own[1])}) is used")
        out[b] = own
    return out, notes


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
    """Backbones of the main comparison: all but the model-size variants (names with ``@``)."""
    return [b for b in data.backbones if "@" not in b]


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


def sweep_curves(data: StudyData, heads: Mapping[str, tuple[int, float]]) -> tuple[list[Curve], list[str]]:
    """Figure 5: for every known task (and dataset) and main backbone, the primary metric vs t (at the headline
    block) and vs block (at the headline t), at the final checkpoint. A curve that lacks its headline point is left
    out (it has nothing to be relative to) and named in the returned notes."""
    curves, notes = [], []
    for task, ds in data.measures():
        if task not in TASK_METRICS:
            continue
        metric = primary_metric(task)
        for b in main_backbones(data):
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


# --- formatting ------------------------------------------------------------------------------------------------------

def fmt_num(x: float) -> str:
    """Four significant digits, integers without a decimal point."""
    if math.isnan(x):
        return "n/a"
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.4g}"


def fmt_pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1f}%"
