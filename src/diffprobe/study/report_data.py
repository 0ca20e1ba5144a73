"""Results-store rows averaged over seeds: the one place that turns stored rows into per-cell statistics, for the
report (:mod:`~diffprobe.study.report`) and the tables ``diffprobe study`` prints (:mod:`~diffprobe.study.tables`).

A *cell* is everything of a store row but its seeds: backbone, mode, checkpoint step, block, t, task, dataset,
metric, and the backbone's identity, ensemble size, clips per role and probe config. A *replicate* is one (noise
seed, probe seed) pair; every statistic is over the replicates of one cell, never over datasets or configs.

Cells are labelled for display: a dataset by its spec (``{role: spec}`` recorded in the store beside its hash; the
hash where no spec was recorded), a backbone by its display name, qualified (``name[...]``) where one name covers
several modes, or several identities, ensembles, clip counts or probe configs (then the latest of those keeps the
plain name and the others name what differs). So the plain name is always the newest weights of that name: a table
that reads plain names never averages in the cells of weights a backbone was retrained away from.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from diffprobe.data.splits import ROLES
from diffprobe.errors import FileProblem, InputError, MissingFile
from diffprobe.study.report_tasks import backbone_order, task_order
from diffprobe.study.store import MATCH_TAG, ResultsStore


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
    #: (backbone label, checkpoint step) -> the store columns its label stands for (see :data:`SETUP`)
    setups: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

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

    def dataset_label(self, digest: str) -> str | None:
        """The label of the dataset whose hash is ``digest`` (None: no result on it)."""
        return next((label for label, info in self.datasets.items() if info.digest == digest), None)

    @cached_property
    def _modes(self) -> dict[str, set[str]]:
        modes: dict[str, set[str]] = defaultdict(set)
        for k in self.stats:
            modes[k.backbone].add(k.mode)
        return dict(modes)

    def mode(self, backbone: str) -> str:
        modes = self._modes.get(backbone, set())
        if len(modes) != 1:
            raise ValueError(f"backbone {backbone!r} has modes {sorted(modes)}; expected exactly one")
        return next(iter(modes))

    def steps(self, backbone: str) -> list[int]:
        return sorted({k.step for k in self.stats if k.backbone == backbone})

    def final_step(self, backbone: str) -> int:
        """The backbone's last checkpoint step (its fully trained model)."""
        return self.steps(backbone)[-1]

    def is_matcher(self, backbone: str) -> bool:
        """Whether a backbone label stands for training-free matcher cells (``diffprobe match``, the study's
        ``match``), not trained probes."""
        return any(str(setup["config_hash"]).startswith(MATCH_TAG) for (label, _), setup in self.setups.items()
                   if label == backbone)

    def get(self, backbone: str, step: int, block: int, t: float, task: str, dataset: str, metric: str
            ) -> Stat | None:
        """The cell's statistic, or None when it was not measured (nor anything of ``backbone``)."""
        if backbone not in self._modes:
            return None
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
SETUP: dict[str, Callable[[Any], str]] = {
    "identity": "id {}".format, "ensemble": "ensemble {}".format, "clips": "clips {}".format,
    "config_hash": lambda h: "matcher" if h.startswith(MATCH_TAG) else f"probe config {h:.8}"}


def label_name(label: str) -> str:
    """The backbone name a display label stands for: the label without its ``[...]`` qualifier."""
    return label.split("[", 1)[0]


def matcher_label(name: str) -> str:
    """The label of backbone ``name``'s newest training-free matcher cells (in a store of one mode per name)."""
    return f"{name}[matcher]"


def _matcher(setup: tuple[Any, ...]) -> bool:
    """Whether a setup (values of :data:`SETUP`, in order) is a training-free matcher's (``diffprobe match``)."""
    return str(setup[list(SETUP).index("config_hash")]).startswith(MATCH_TAG)


def _backbone_labels(rows: list[Mapping[str, Any]]) -> tuple[dict[tuple[Any, ...], str], list[str]]:
    """``(backbone, mode, checkpoint step, *setup) -> label`` and notes (see the module docstring). Setups are
    compared within one checkpoint step: an earlier checkpoint has its own identity and is its own cell already."""
    modes: dict[str, set[str]] = defaultdict(set)
    # (backbone, mode, checkpoint step) -> setup -> its latest time
    setups: dict[tuple[str, str, int], dict[tuple[Any, ...], str]] = defaultdict(dict)
    for r in rows:
        modes[r["backbone"]].add(r["mode"])
        setup = tuple(r[c] for c in SETUP)
        seen = setups[r["backbone"], r["mode"], int(r["checkpoint_step"])]
        seen[setup] = max(seen.get(setup, ""), r["time"])
    notes = [f"backbone {b!r} was probed in modes {sorted(m)}; shown as {b}[mode]"
             for b, m in sorted(modes.items()) if len(m) > 1]
    labels = {}
    for (name, mode, step), seen in sorted(setups.items()):
        base = [mode] if len(modes[name]) > 1 else []
        # the plain name goes to the latest trained probe's setup; a matcher's cells are always named so
        trained = [s for s in seen if not _matcher(s)] or list(seen)
        latest = max(trained, key=lambda s: (seen[s], s))
        for setup in seen:
            parts = base + [name_of(v) for name_of, v, w in zip(SETUP.values(), setup, latest, strict=True) if v != w]
            parts += ["matcher"] if _matcher(setup) and "matcher" not in parts else []
            labels[(name, mode, step, *setup)] = f"{name}[{', '.join(parts)}]" if parts else name
        if len(seen) > 1:
            plain = f"{name}[{mode}]" if base else name
            notes.append(f"backbone {plain!r} has results of {len(seen)} setups (identity, ensemble, clips or probe "
                         f"config); the latest is shown as {plain}, each other one named by what differs from it")
    return labels, notes


def aggregate(study: str, rows: Iterable[Mapping[str, Any]],
              specs: Mapping[str, Mapping[str, str]] | None = None) -> StudyData:
    """Group store rows by :class:`Key`; ``specs`` (``ResultsStore.data_specs()``) names the datasets. No rows: a
    study without results (no cells)."""
    rows = list(rows)
    labels, notes = _backbone_labels(rows)
    data_label = dataset_labels((r["dataset"] for r in rows), specs or {})
    groups: dict[Key, list[float]] = defaultdict(list)
    setups: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        label = labels[(r["backbone"], r["mode"], int(r["checkpoint_step"]), *(r[c] for c in SETUP))]
        key = Key(label, r["mode"], int(r["checkpoint_step"]), int(r["block"]), float(r["t"]), r["task"],
                  data_label[r["dataset"]], r["metric"])
        groups[key].append(float(r["value"]))
        setups[label, key.step] = {c: r[c] for c in SETUP}
    times = sorted(r["time"] for r in rows) or [""]
    datasets = {lab: DataInfo(d, dict((specs or {})[d]) if d in (specs or {}) else None)
                for d, lab in data_label.items()}
    return StudyData(study=study, stats={k: Stat(tuple(v)) for k, v in groups.items()},
                     config_hashes=sorted({r["config_hash"] for r in rows}), first_time=times[0],
                     last_time=times[-1], n_rows=len(rows), notes=notes, datasets=datasets,
                     setups=setups)
