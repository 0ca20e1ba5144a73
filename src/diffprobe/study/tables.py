"""The text tables ``diffprobe study`` prints at the end: the headline table, the paired comparisons on the same
test clips, and every backbone against each task's prior."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from diffprobe.metrics import paired_difference
from diffprobe.study.config import StudyConfig
from diffprobe.study.headline import resolve_headlines
from diffprobe.study.motion import RESULTS_FILE
from diffprobe.study.plan import current_cells, final_step, is_current, motion_config, motion_dir
from diffprobe.study.report_data import Stat, StudyData, aggregate, matcher_label
from diffprobe.study.report_tasks import (
    HIGHER_IS_BETTER,
    PRIOR,
    TASK_METRICS,
    UNTRAINED,
    control_legend,
    margin_z,
    primary_metric,
    relative_percent,
)
from diffprobe.study.store import ResultsStore, clips_key, match_config_hash
from diffprobe.tasks import TASKS
from diffprobe.tasks.roles import MATCH_TASK, data_identity, task_roles
from diffprobe.utils.io import read_json

NAN = float("nan")


class _Headline:
    """The cells the printed tables read: each backbone of the config at its headline (block, t)
    (:func:`~diffprobe.study.headline.resolve_headlines`) and final checkpoint, on the config's data for the task.

    The store's rows are kept to this config's (:func:`~diffprobe.study.plan.is_current`: its datasets, clip counts
    and probe config) and averaged by :func:`~diffprobe.study.report_data.aggregate`, whose plain backbone names are
    the newest weights of each name, so a table never averages in the cells of weights a backbone was retrained
    away from."""

    def __init__(self, cfg: StudyConfig, store_path: Path) -> None:
        self.cfg, self.store_path = cfg, store_path
        self.current = current_cells(cfg)
        with ResultsStore(store_path) as store:
            rows = [r for r in store.query(study=cfg.name)
                    if r["task"] in self.current and is_current(r, cfg, self.current)]
            specs = store.data_specs()
        self.data: StudyData = aggregate(cfg.name, rows, specs)
        self.heads, _ = resolve_headlines(cfg, self.data)
        self.steps = {name: final_step(cfg, spec) for name, spec in cfg.backbones.items()}
        self._scores: dict[tuple[str, str], dict[tuple[int, int], np.ndarray]] = {}  # read once per cell

    def where(self, backbone: str, task: str) -> dict[str, Any] | None:
        """The store columns of ``backbone``'s headline cell on ``task`` (seeds aside); None: not measured."""
        step = self.steps.get(backbone, 0)
        setup = self.data.setups.get((backbone, step))
        if setup is None or backbone not in self.heads:
            return None
        block, t = self.heads[backbone]
        return {"backbone": backbone, "checkpoint_step": step, "block": block, "t": t, "task": task,
                "dataset": self.current[task]["dataset"], **setup}

    def stat(self, backbone: str, task: str, metric: str) -> Stat | None:
        """The replicates of ``metric`` at ``backbone``'s headline cell on ``task``; None: not measured."""
        cell = self.where(backbone, task)
        label = self.data.dataset_label(self.current[task]["dataset"])
        if cell is None or label is None:
            return None
        return self.data.get(backbone, cell["checkpoint_step"], cell["block"], cell["t"], task, label, metric)

    def mean(self, backbone: str, task: str, metric: str) -> float:
        stat = self.stat(backbone, task, metric)
        return NAN if stat is None else stat.mean

    def seed_sd(self, backbone: str, task: str, metric: str) -> float:
        stat = self.stat(backbone, task, metric)
        return stat.std if stat is not None and stat.n > 1 else NAN

    def per_clip(self, backbone: str, task: str) -> dict[tuple[int, int], np.ndarray]:
        """(noise seed, probe seed) -> the per-clip scores of that replicate of the headline cell (the prior: one
        replicate); the same cells :meth:`stat` averages."""
        if (backbone, task) not in self._scores:  # the paired blocks and the prior block read the same cells
            cell = self.where(backbone, task)
            scores = {}
            if cell is not None:
                with ResultsStore(self.store_path) as store:
                    scores = {(c["noise_seed"], c["probe_seed"]): a
                              for c, a in store.clip_scores(study=self.cfg.name, **cell)}
            self._scores[backbone, task] = scores
        return self._scores[backbone, task]


def headline_table(cfg: StudyConfig, store_path: Path) -> str:
    """The results table: each task's metrics at the headline cell of every backbone and the no-information prior,
    as the mean over probe (and noise) seeds; under the primary metric its standard error over test clips (``s.e.``)
    and, with several seeds, the sample std of the seeds' values (``seed sd``); the reference pair's video side
    relative to its image side, and the video side against the control in standard errors (``z = (video - control)
    / sqrt(se_v^2 + se_c^2)``, positive when the video side is better; |z| > 2 is a difference larger than test-set
    noise). The paired block below it compares the same test clips (see :func:`paired_table`)."""
    cells = _Headline(cfg, store_path)
    names = [*cfg.backbones, PRIOR]
    video, image = cfg.reference
    control = cfg.control
    seeded = cfg.replicates() > 1
    z_name = "video-untr. z" if control == UNTRAINED else f"video-{control} z"
    head = (f"{'task':<16}{'metric':<28}" + "".join(f"{n:>16}" for n in names) + f"{'video/image':>14}"
            + (f"{z_name:>15}" if control else ""))
    lines = ([f"note: {cfg.caveat}"] if cfg.caveat else []) + [head, "-" * len(head)]
    for task in (t for t in TASKS if t in cfg.tasks):
        primary = primary_metric(task)
        for metric in TASK_METRICS[task]:
            vals = {n: cells.mean(n, task, metric) for n in names}
            rel = relative_percent(vals[video], vals[image], HIGHER_IS_BETTER[metric])
            line = f"{task:<16}{metric:<28}" + "".join(f"{v:>16.4f}" for v in vals.values()) + f"{rel:>13.1f}%"
            if metric != primary:
                lines.append(line)
                continue
            se = {n: cells.mean(n, task, f"{metric}_se") for n in names}
            if control:
                z = margin_z(vals[video], vals[control], se[video], se[control], HIGHER_IS_BETTER[metric])
                line += f"{z:>15.1f}"
            lines.append(line)
            lines.append(f"{'':<16}{'  s.e.':<28}" + "".join(f"{v:>16.4f}" for v in se.values()))
            if seeded:
                lines.append(f"{'':<16}{'  seed sd':<28}" + "".join(
                    f"{cells.seed_sd(n, task, metric):>16.4f}" for n in names))
    legend = control_legend(names)
    return "\n".join(lines + ["", *paired_table(cfg, cells.per_clip)] + analyses_lines(cfg, store_path, cells)
                     + (["", "controls:", *(f"  {line}" for line in legend)] if legend else []))


def analyses_lines(cfg: StudyConfig, store_path: Path, cells: _Headline) -> list[str]:
    """Lines of the analyses past the trained probes, at each backbone's headline: the training-free matcher's
    point-tracking primary metric (mean over noise seeds) beside the trained probe's, and the motion ratio of the
    first-frame tokens (the mean over the study's motion clips)."""
    lines = []
    metric = primary_metric(MATCH_TASK)
    if cfg.match:
        where = {"study": cfg.name, "task": MATCH_TASK, "metric": metric, "clips": clips_key(cfg.probe_clips),
                 "dataset": data_identity(task_roles(MATCH_TASK, cfg.roles(MATCH_TASK))),
                 "config_hash": match_config_hash([0], cfg.match_grid)}
        with ResultsStore(store_path) as store:
            data = aggregate(cfg.name, store.query(**where))  # the newest weights of a name under its plain label
        lines += ["", f"training-free matcher, {MATCH_TASK} {metric} (no readout trained; setting chosen on val; "
                      "docs/readouts.md):", f"{'':<16}{'':<28}" + "".join(f"{n:>16}" for n in cfg.backbones)]
        matched = []
        for name, spec in cfg.backbones.items():
            stat = data.get(matcher_label(name), final_step(cfg, spec), *cfg.headline_of(name), MATCH_TASK,
                            data.dataset_label(where["dataset"]) or "", metric)
            matched.append(NAN if stat is None else stat.mean)
        lines.append(f"{'':<16}{'matcher':<28}" + "".join(f"{v:>16.4f}" for v in matched))
        if MATCH_TASK in cfg.tasks:
            lines.append(f"{'':<16}{'trained probe':<28}" + "".join(
                f"{cells.mean(n, MATCH_TASK, metric):>16.4f}" for n in cfg.backbones))
    if cfg.motion_clips:
        ratios = []
        for name in cfg.backbones:
            path = motion_dir(store_path.parent, name, motion_config(cfg, name)) / RESULTS_FILE
            ratios.append(read_json(path)["mean_ratio"] if path.is_file() else NAN)
        lines += ["", f"motion ratio of first-frame tokens over {cfg.motion_clips} test clips (paper Fig. 4; 1: frame "
                      "0 read alone; docs/motion.md):",
                  f"{'':<16}{'':<28}" + "".join(f"{n:>16}" for n in cfg.backbones),
                  f"{'':<16}{'mean ratio':<28}" + "".join(f"{v:>16.4f}" for v in ratios)]
    return lines


def paired_table(cfg: StudyConfig, per_clip: Callable[[str, str], dict[tuple[int, int], np.ndarray]]) -> list[str]:
    """Lines of the paired comparisons at the headline cells: the video side against the control and against the
    image side, from the per-clip primary metric on the same test clips, averaged over probe and noise seeds: the
    mean difference (positive: the video side is better), its paired z and a bootstrap 95% interval; with several
    seeds also the smallest of the per-seed z (seed i of one side against seed i of the other), so a claim can be
    seen to hold on every seed. ``per_clip(backbone, task)`` gives each replicate's per-clip scores at the headline
    cell (the table's cells: ``_Headline.per_clip``)."""
    video, image = cfg.reference
    others = [n for n in (cfg.control, image) if n]
    seeded = cfg.replicates() > 1
    width = 44 if seeded else 36
    head = f"{'paired, same test clips':<24}" + "".join(f"{f'{video} - {o}':>{width}}" for o in others)
    sub = "diff   z [95% CI of diff]" + (" min z" if seeded else "")
    lines = [head, f"{'task':<24}" + "".join(f"{sub:>{width}}" for _ in others), "-" * len(head)]
    for task in (t for t in TASKS if t in cfg.tasks):
        better = HIGHER_IS_BETTER[primary_metric(task)]
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
    return [*lines, "", *_against_prior(cfg, per_clip)]


def _against_prior(cfg: StudyConfig, per_clip: Callable[[str, str], dict[tuple[int, int], np.ndarray]]
                   ) -> list[str]:
    """Lines of every backbone's paired z against each task's prior (the same test clips; the seed mean, and with
    several seeds the smallest per-seed z in brackets): a backbone reads a task only where this is well above 0,
    and the pixels control shows whether the readout can read it from the clip at all."""
    names = list(cfg.backbones)
    lines = [f"{'paired z against the prior':<28}" + "".join(f"{n:>16}" for n in names)]
    lines.append("-" * len(lines[0]))
    for task in (t for t in TASKS if t in cfg.tasks):
        better = HIGHER_IS_BETTER[primary_metric(task)]
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
