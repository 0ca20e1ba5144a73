"""What the report knows about tasks and metrics: the primary metric of each task, metric directions, and the
normalisation formulas used by every figure.

Formulas (stated once, here and in docs/report.md):

- ``relative_percent(v, r)`` = ``100 * v / r`` for a higher-is-better metric and ``100 * r / v`` for a
  lower-is-better one, so "better than the reference" is always above 100% and twice as good (double the accuracy
  or half the error) is 200%.
- ``relative_change(v, h)`` = ``relative_percent(v, h) - 100``: the change relative to a curve's own value at
  the headline point, 0% there.
- ``margin_z(a, b, se_a, se_b)`` = ``(a - b) / sqrt(se_a^2 + se_b^2)``, signed so that positive means ``a`` is
  better: the difference of two cells in test-set standard errors (|z| < 2 is within the noise).
"""

from __future__ import annotations

import math

from diffprobe.metrics import HIGHER_IS_BETTER
from diffprobe.tasks import TASKS

#: task -> the metrics the table and figures show, primary first: read from the tasks, which declare them.
TASK_METRICS: dict[str, tuple[str, ...]] = {name: cls.table_metrics for name, cls in TASKS.items()}

#: the twins and controls, in the order the report shows them.
IMAGE, VIDEO, UNTRAINED, LATENTS, PIXELS = "walt-image", "walt-video", "walt-untrained", "latents", "pixels"
PRIOR = "prior"  #: each task's no-information baseline (Task.prior), stored beside the backbones
#: the (block, t) the prior is stored at, and a backbone without blocks or noise levels (latents, pixels) is read at
UNBLOCKED: tuple[int, float] = (0, 0.0)
BACKBONE_ORDER = (IMAGE, VIDEO, UNTRAINED, LATENTS, PIXELS, PRIOR)
#: what each control shows, as the table's legend, Figure 1's caption and the summary say it
CONTROLS: dict[str, str] = {
    UNTRAINED: "the twins' architecture and tokenizer without learning (what training adds is the margin over it)",
    LATENTS: "the tokenizer's latents (what the twins start from)",
    PIXELS: "the clip's own pixels, the positive control (what the readout can read from the clip itself)",
    PRIOR: "the floor: each task's answer without looking (class frequencies, static points, mean depth)",
}


def control_legend(backbones: set[str] | list[str]) -> list[str]:
    """``"name: what it shows"`` for each control among ``backbones``, in the report's order."""
    return [f"{c}: {CONTROLS[c]}" for c in BACKBONE_ORDER if c in CONTROLS and c in backbones]


def task_order(tasks: set[str] | list[str]) -> list[str]:
    """Known tasks in the paper's order, then unknown ones alphabetically."""
    known = [t for t in TASK_METRICS if t in tasks]
    return known + sorted(set(tasks) - set(TASK_METRICS))


def backbone_order(backbones: set[str] | list[str]) -> list[str]:
    """Twins and controls first (image, video, untrained, latents, pixels), then others alphabetically."""
    known = [b for b in BACKBONE_ORDER if b in backbones]
    return known + sorted(set(backbones) - set(BACKBONE_ORDER))


def primary_metric(task: str) -> str:
    """The metric that stands for ``task`` in the figures; ``KeyError`` naming the task if it is unknown."""
    if task not in TASKS:
        raise KeyError(f"task {task!r} has no known primary metric; known tasks: {sorted(TASKS)}")
    return TASKS[task].primary_metric


def higher_is_better(metric: str) -> bool:
    """Direction of ``metric``; ``KeyError`` naming it if unknown."""
    if metric not in HIGHER_IS_BETTER:
        raise KeyError(f"metric {metric!r} has no known direction; known: {sorted(HIGHER_IS_BETTER)}")
    return HIGHER_IS_BETTER[metric]


def relative_percent(value: float, reference: float, higher_better: bool) -> float:
    """``value`` relative to ``reference`` in percent, oriented so that better is above 100.

    ``100 * value / reference`` if higher is better, else ``100 * reference / value``. NaN when either input is NaN
    or the divisor is not positive (the ratio is then undefined).
    """
    num, den = (value, reference) if higher_better else (reference, value)
    if math.isnan(num) or math.isnan(den) or den <= 0:
        return math.nan
    return 100.0 * num / den


def relative_change(value: float, at_headline: float, higher_better: bool) -> float:
    """Relative change in percent from a curve's headline value (0 at the headline, positive = better)."""
    return relative_percent(value, at_headline, higher_better) - 100.0


def margin_z(a: float, b: float, se_a: float, se_b: float, higher_better: bool) -> float:
    """``a``'s margin over ``b`` in standard errors, positive when ``a`` is better; NaN when neither standard error
    is known and positive (no spread measured)."""
    noise = math.hypot(se_a, se_b)
    if not noise > 0:  # also NaN
        return math.nan
    return (a - b) / noise * (1.0 if higher_better else -1.0)
