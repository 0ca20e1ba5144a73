"""The report's figures keep their legends off what they draw: after layout, no legend's box meets a bar, a bar's
label or a panel."""

from __future__ import annotations

from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from diffprobe.study.figure_data import Bar, Curve, ScalePoint
from diffprobe.study.figures import relative_bars_figure, relative_change_figure, scaling_figure, sweeps_figure
from diffprobe.study.report_data import Stat
from diffprobe.study.report_tasks import relative_percent

BACKBONES = ("walt-image", "walt-video", "walt-untrained", "latents", "prior", "dinov2", "vjepa2")
# per task, each backbone's top1; the first task is the tallest, where an upper-left legend would land on it
TOP1 = {"image_cls": (0.3, 0.33, 0.1, 0.12, 0.1, 0.36, 0.35), "action": (0.3, 0.2, 0.1, 0.1, 0.1, 0.2, 0.25),
        "depth": (0.3, 0.25, 0.1, 0.15, 0.1, 0.2, 0.2)}


def _bars() -> list[Bar]:
    out = []
    for task, values in TOP1.items():
        ref = Stat((values[0],))
        for name, v in zip(BACKBONES, values, strict=True):
            pct = relative_percent(v, ref.mean, True)
            out.append(Bar(task, "top1", name, 2, 200.0, Stat((v,)), ref, pct, pct, pct))
    return out


def _drawn(fig: Figure) -> RendererBase:
    """Draw ``fig`` (as ``png_bytes`` does) and return the renderer its extents are measured with."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _extents(fig: Figure) -> tuple[list[Bbox], list[Bbox], list[Bbox]]:
    """Window extents of the legends, the bars, and the texts drawn in the axes (bar labels), after layout."""
    r = _drawn(fig)
    legends = [lg.get_window_extent(r) for lg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if lg]
    bars = [p.get_window_extent(r) for ax in fig.axes for p in ax.patches]
    texts = [t.get_window_extent(r) for ax in fig.axes for t in ax.texts]
    return legends, bars, texts


def test_figure_1_legend_is_off_the_bars_and_their_labels() -> None:
    fig = relative_bars_figure(_bars())
    legends, bars, texts = _extents(fig)
    assert len(legends) == 1 and len(bars) == 21 and len(texts) == 21
    for box in bars + texts:
        assert not legends[0].overlaps(box), box
    for i, a in enumerate(texts):  # neighbouring bars' labels stay apart too
        assert not any(a.overlaps(b) for b in texts[i + 1:]), a


def test_multi_panel_legends_cover_no_panel() -> None:
    stats = (Stat((0.3, 0.35)), Stat((0.4, 0.42)), Stat((0.2, 0.3)))
    curves = [Curve(task, "top1", name, axis, 2.0 if axis == "t" else 200.0, xs, stats, xs[1])
              for task in ("image_cls", "action") for name in BACKBONES[:4]
              for axis, xs in (("t", (0.0, 200.0, 500.0)), ("block", (1.0, 2.0, 3.0)))]
    points = [ScalePoint(name, "video", step, "tiny", fd, q, {}) for name, pts in
              (("walt-image", ((500, 90.0, 50.0), (1000, 60.0, 100.0))),
               ("walt-video", ((500, 120.0, 70.0), (1000, 70.0, 140.0)))) for step, fd, q in pts]
    points += [ScalePoint(name, "video", 0, None, None, 40.0, {}) for name in BACKBONES[2:]]
    for fig in (sweeps_figure(curves), relative_change_figure(curves), scaling_figure(points)):
        r = _drawn(fig)
        [legend] = [lg.get_window_extent(r) for lg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if lg]
        for ax in fig.axes:
            assert not legend.overlaps(ax.get_tightbbox(r)), ax.get_title()
