"""Uncertainty of a metric over a test set whose clips are the independent units. Numpy only."""

from __future__ import annotations

import numpy as np


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

    NaN entries (clips with nothing to score) are left out; fewer than two finite values give NaN."""
    v = _finite(values)
    if v.size < 2:
        return float("nan")
    return float(np.std(v, ddof=1) / np.sqrt(v.size))
