"""The report's figures (matplotlib ``Figure`` objects, no pyplot state): Figure 1 (relative bars), Figure 5
(sweeps and relative change), and the model-size / training-budget plot."""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Collection, Sequence
from itertools import cycle

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from diffprobe.study.figure_data import Bar, Curve, ScalePoint
from diffprobe.study.formatting import fmt_num
from diffprobe.study.report_data import label_name, measure_labels
from diffprobe.study.report_tasks import (
    CONTROLS,
    IMAGE,
    LATENTS,
    PIXELS,
    PRIOR,
    UNTRAINED,
    VIDEO,
    backbone_order,
    higher_is_better,
    task_order,
)

_FIXED_COLOURS = {IMAGE: "#4C72B0", VIDEO: "#DD8452", UNTRAINED: "#9A9A9A", LATENTS: "#8C613C", PIXELS: "#2E8B57",
                  PRIOR: "#D0D0D0"}
_OTHER_COLOURS = ("#55A868", "#C44E52", "#8172B3", "#DA8BC3", "#CCB974", "#64B5CD", "#2F4F4F")
_TASK_COLOURS = ("#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F")


def colours(backbones: Sequence[str]) -> dict[str, str]:
    """A fixed colour per twin/control (a qualified label ``name[...]`` takes its name's) and a stable palette for
    the rest (in the order given)."""
    others = cycle(_OTHER_COLOURS)
    return {b: _FIXED_COLOURS.get(label_name(b)) or next(others) for b in backbones}


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """Render ``fig`` to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _arrow(metric: str) -> str:
    return "↑" if higher_is_better(metric) else "↓"


def relative_bars_figure(bars: Sequence[Bar], reference: str = IMAGE) -> Figure:
    """Figure 1: per task (and dataset, where a task has several), each backbone's primary metric relative to
    ``reference`` (= 100%), min-max whiskers over replicates when there are several; the legend sits above the
    axes, clear of the bars and their labels."""
    names = measure_labels((b.task, b.dataset) for b in bars)
    order = {t: i for i, t in enumerate(task_order({b.task for b in bars}))}
    tasks = sorted(names, key=lambda m: (order[m[0]], m[1]))  # (task, dataset) groups along x
    backbones = backbone_order({b.backbone for b in bars})
    col = colours(backbones)
    by = {(b.task, b.dataset, b.backbone): b for b in bars}
    metric_of = {b.task: b.metric for b in bars}
    fig = Figure(figsize=(max(6.0, len(tasks) * max(1.5, 0.25 * len(backbones)) + 2), 4.6))
    ax = fig.subplots()
    width = 0.8 / len(backbones)
    top = 100.0
    labelled: set[str] = set()
    for j, name in enumerate(backbones):
        for i, (task, ds) in enumerate(tasks):
            bar = by.get((task, ds, name))
            if bar is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            if math.isnan(bar.percent):
                ax.text(x, 2, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                continue
            err = None
            if bar.stat.n > 1:
                err = [[bar.percent - bar.lo], [bar.hi - bar.percent]]
            ax.bar(x, bar.percent, width * 0.92, color=col[name], yerr=err, capsize=2, ecolor="#333333",
                   label=None if name in labelled else name)
            labelled.add(name)
            y = bar.hi if bar.stat.n > 1 else bar.percent
            top = max(top, y)
            ax.text(x, y + 1, f"{bar.percent:.0f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(100.0, color="#333333", lw=0.8, ls="--")
    ax.set_xticks(range(len(tasks)), [f"{_wrap(names[m])}\n({metric_of[m[0]]} {_arrow(metric_of[m[0]])})"
                                      for m in tasks], fontsize=8)
    ax.set_ylabel(f"relative to {reference} (%)\nabove 100 = better")
    ax.set_ylim(0, top * 1.12)
    ax.set_title(f"Video vs image per task (headline block and t; {reference} = 100%)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    if labelled:  # outside the axes, right of them: never over a bar or its label
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int = 22) -> str:
    """``text`` broken into lines of at most ``width`` characters (at spaces or '/', long parts kept whole)."""
    lines, cur = [], ""
    for part in text.replace("/", "/\0").replace(" ", " \0").split("\0"):
        if cur and len(cur) + len(part) > width:
            lines.append(cur.rstrip())
            cur = ""
        cur += part
    return "\n".join([*lines, cur.rstrip()])


def sweeps_figure(curves: Sequence[Curve], dashed: Collection[str] = ()) -> Figure:
    """Figure 5 (absolute): per task (and dataset), primary metric vs t (left) and vs block (right); one curve per
    backbone, ±std bands over replicates, the headline point circled; a backbone with a single value is a dashed
    line, and so are the curves of the backbones in ``dashed`` (a reference drawn beside the others)."""
    names = measure_labels((c.task, c.dataset) for c in curves)
    order = {t: i for i, t in enumerate(task_order({c.task for c in curves}))}
    tasks = sorted(names, key=lambda m: (order[m[0]], m[1]))
    col = colours(backbone_order({c.backbone for c in curves}))
    fig = Figure(figsize=(10, 2.5 * len(tasks) + 0.4))
    axes = fig.subplots(len(tasks), 2, squeeze=False)
    legend: dict[str, Artist] = {}
    for r, (task, ds) in enumerate(tasks):
        for c_idx, axis in enumerate(("t", "block")):
            ax = axes[r, c_idx]
            mine = [c for c in curves if c.task == task and c.dataset == ds and c.axis == axis]
            swept = [c for c in mine if len(c.xs) > 1]
            for c in mine:
                means = [s.mean for s in c.stats]
                if len(c.xs) == 1 and swept:
                    ax.axhline(means[0], color=col[c.backbone], ls="--", lw=1.2, label=f"{c.backbone} (one value)")
                    continue
                ax.plot(c.xs, means, "--o" if c.backbone in dashed else "-o", ms=3, color=col[c.backbone],
                        label=c.backbone)
                if any(s.n > 1 for s in c.stats):
                    ax.fill_between(c.xs, [s.mean - s.std for s in c.stats], [s.mean + s.std for s in c.stats],
                                    color=col[c.backbone], alpha=0.18, lw=0)
                ax.plot([c.headline_x], [c.headline_stat.mean], "o", ms=8, mfc="none", mec=col[c.backbone])
            metric = mine[0].metric if mine else ""
            ax.set_title(f"{names[task, ds]}: {metric} vs {'noise level t' if axis == 't' else 'block'} "
                         f"{_fixed_label(swept or mine, axis)}", fontsize=9)
            _style_axis(ax, axis)
            if metric:
                ax.set_ylabel(f"{metric} {_arrow(metric)}", fontsize=8)
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(lab, h)
    _top_legend(fig, legend)
    return fig


def _top_legend(fig: Figure, handles: dict[str, Artist], per_row: int = 5) -> None:
    """Lay ``fig`` out below a strip it reserves at its top, and put the legend of ``handles`` there (rows of at
    most ``per_row`` entries), where it covers no panel."""
    rows = -(-len(handles) // per_row)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.1 + 0.25 * rows) / fig.get_figheight()))
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=min(per_row, len(handles)), fontsize=8,
                   frameon=False)


def _fixed_label(curves: Sequence[Curve], axis: str) -> str:
    """'(at block 6)' when all curves share the fixed coordinate, else '(at each headline block)'."""
    other = "block" if axis == "t" else "t"
    fixed = {c.fixed for c in curves}
    return f"(at {other} {fmt_num(fixed.pop())})" if len(fixed) == 1 else f"(at each headline {other})"


def _style_axis(ax: Axes, axis: str) -> None:
    ax.set_xlabel("t (0..1000)" if axis == "t" else "block", fontsize=8)
    if axis == "block":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)


def relative_change_figure(curves: Sequence[Curve], floor: float = -50.0) -> Figure:
    """Figure 5 (relative, as in the paper): per swept backbone (a row) and axis (a column), every task's primary
    metric as relative change from its own headline value (0%; positive = better). Values below ``floor`` are
    drawn at the floor, and the panel says so."""
    swept = [c for c in curves if len(c.xs) > 1]
    names = [b for b in backbone_order({c.backbone for c in swept}) if b not in CONTROLS] or \
        backbone_order({c.backbone for c in swept})
    names_of = measure_labels((c.task, c.dataset) for c in swept)
    order = {t: i for i, t in enumerate(task_order({c.task for c in swept}))}
    tasks = sorted(names_of, key=lambda m: (order[m[0]], m[1]))
    tcol = dict(zip(tasks, cycle(_TASK_COLOURS), strict=False))
    fig = Figure(figsize=(10, 2.9 * max(1, len(names)) + 0.3))
    axes = fig.subplots(max(1, len(names)), 2, squeeze=False)
    legend: dict[str, Artist] = {}
    for r, name in enumerate(names):
        for c_idx, axis in enumerate(("t", "block")):
            ax = axes[r, c_idx]
            clipped = 0
            for c in swept:
                if c.backbone != name or c.axis != axis:
                    continue
                rel = c.relative_changes()
                clipped += sum(v < floor for v in rel if not math.isnan(v))
                ax.plot(c.xs, [max(v, floor) for v in rel], "-o", ms=3, color=tcol[c.task, c.dataset],
                        label=names_of[c.task, c.dataset])
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(lab, h)
            ax.axhline(0.0, color="#333333", lw=0.8, ls="--")
            mine = [c for c in swept if c.backbone == name and c.axis == axis]
            ax.set_title(f"{name}: relative change vs {'noise level t' if axis == 't' else 'block'} "
                         f"{_fixed_label(mine, axis)}", fontsize=9)
            _style_axis(ax, axis)
            ax.set_ylabel("change from headline (%)", fontsize=8)
            if clipped:
                ax.text(0.99, 0.98, f"{clipped} point(s) below {floor:.0f}% drawn at {floor:.0f}%",
                        transform=ax.transAxes, ha="right", va="top", fontsize=7, color="#AA0000")
    _top_legend(fig, legend)
    return fig


def scaling_figure(points: Sequence[ScalePoint], reference: str = IMAGE) -> Figure:
    """Representation quality vs generation quality (Fréchet distance, left) and vs training step (right); one
    line per backbone along its checkpoints, each point labelled with its step."""
    backbones = backbone_order({p.backbone for p in points})
    col = colours(backbones)
    fig = Figure(figsize=(11, 4.2))
    ax_fd, ax_step = fig.subplots(1, 2)
    lines: dict[str, list[ScalePoint]] = defaultdict(list)
    for p in sorted(points, key=lambda p: p.step):
        lines[p.backbone].append(p)
    for name in backbones:
        pts = lines[name]
        fd = [p for p in pts if p.frechet is not None]
        if fd:
            ax_fd.plot([p.frechet for p in fd], [p.quality for p in fd], "-o", ms=4, color=col[name], label=name)
            for p in fd:
                ax_fd.annotate(f"{p.step}", (p.frechet, p.quality), fontsize=6.5, xytext=(3, 3),
                               textcoords="offset points")
        ax_step.plot([p.step for p in pts], [p.quality for p in pts], "-o", ms=4, color=col[name], label=name)
    steps = [p.step for p in points if p.step > 0]
    if steps and max(steps) / min(steps) > 20:
        ax_step.set_xscale("log")
    legend: dict[str, Artist] = {}
    for ax in (ax_fd, ax_step):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(lab, h)
        ax.axhline(100.0, color="#333333", lw=0.8, ls="--")
        ax.set_ylabel(f"representation quality\n(mean over tasks, % of {reference} final)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    ax_fd.set_xlabel("Fréchet distance (generation; ← better)", fontsize=8)
    ax_fd.set_title("representation vs generation quality", fontsize=9)
    if not any(p.frechet is not None for p in points):
        ax_fd.text(0.5, 0.5, "no generation.json rows match", transform=ax_fd.transAxes, ha="center")
    ax_step.set_xlabel("checkpoint step (training budget)", fontsize=8)
    ax_step.set_title("representation quality vs training budget", fontsize=9)
    _top_legend(fig, legend, per_row=8)
    return fig
