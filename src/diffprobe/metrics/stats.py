"""Uncertainty of a metric over a test set whose clips are the independent units. Numpy only."""

from __future__ import annotations

import numpy as np

from diffprobe.metrics.directions import PROPORTIONS


def _finite(values: np.ndarray | list[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def finite_mean(values: np.ndarray | list[float]) -> float:
    """Mean of the finite values (clips or frames with nothing to score are NaN); NaN, without a warning, when
    there are none."""
    v = _finite(values)
    return float(v.mean()) if v.size else float("nan")


def standard_error(values: np.ndarray | list[float]) -> float:
    """Standard error of the mean of per-clip ``values`` (N,): ``std(ddof=1) / sqrt(n)`` over the finite ones.

    NaN entries (clips with nothing to score) are left out; fewer than two finite values give NaN. For a proportion
    (per-clip outcomes of 0 or 1, such as top-1 accuracy) use :func:`proportion_standard_error`."""
    v = _finite(values)
    if v.size < 2:
        return float("nan")
    return float(np.std(v, ddof=1) / np.sqrt(v.size))


def proportion_standard_error(outcomes: np.ndarray | list[float]) -> float:
    """Standard error of a proportion (an accuracy) from per-clip ``outcomes`` (N,) of 0 or 1 (NaN: not scored).

    Agresti-Coull: with k successes of n, ``p~ = (k + 2) / (n + 4)`` and ``se = sqrt(p~ (1 - p~) / (n + 4))``. Unlike
    the plain ``sqrt(p (1 - p) / (n - 1))`` of :func:`standard_error` it is never 0 when every clip is right (or
    every clip wrong) and it is defined for one clip; at n = 512, p ~ 0.2 it is within 3e-5 of the plain one. NaN
    when no clip is scored."""
    v = _finite(outcomes)
    if not np.isin(v, (0.0, 1.0)).all():
        raise ValueError(f"proportion_standard_error: outcomes must be 0 or 1, got {sorted(set(v.tolist()))[:5]}")
    if not v.size:
        return float("nan")
    n = v.size + 4.0
    p = (v.sum() + 2.0) / n
    return float(np.sqrt(p * (1.0 - p) / n))


def metric_standard_error(metric: str, per_clip: np.ndarray | list[float]) -> float:
    """The standard error of ``metric`` over the test clips from its per-clip values (N,): a proportion's
    (:func:`proportion_standard_error`) for the metrics in ``PROPORTIONS``, the mean's (:func:`standard_error`)
    for every other."""
    return (proportion_standard_error if metric in PROPORTIONS else standard_error)(per_clip)


def paired_difference(a: np.ndarray | list[float], b: np.ndarray | list[float], higher_is_better: bool = True,
                      resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """How much better ``a`` is than ``b`` on the same test clips, from the per-clip paired differences.

    ``a``, ``b``: (N,) per-clip scores of two backbones on the same N clips (NaN where a clip has nothing to score;
    such clips are left out of both). Returns ``diff`` (mean of ``a - b``, sign flipped for a lower-is-better
    metric so that positive means ``a`` is better), ``se`` (its standard error, std(ddof=1) / sqrt(n)), ``z`` =
    diff / se, ``lo`` / ``hi`` (a percentile-bootstrap 95% interval of ``diff``, ``resamples`` resamples of the
    clips with a generator seeded by ``seed``) and ``n``. NaN where fewer than two clips are scored by both."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: the two backbones were scored on {a.size} and {b.size} clips")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)] * (1.0 if higher_is_better else -1.0)  # (n,)
    nan = float("nan")
    if d.size < 2:
        return {"diff": nan, "se": nan, "z": nan, "lo": nan, "hi": nan, "n": float(d.size)}
    se = float(np.std(d, ddof=1) / np.sqrt(d.size))
    means = d[np.random.default_rng(seed).integers(0, d.size, (resamples, d.size))].mean(axis=1)  # (resamples,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "se": se, "z": float(d.mean() / se) if se > 0 else nan, "lo": float(lo),
            "hi": float(hi), "n": float(d.size)}
