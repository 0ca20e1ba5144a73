"""Uncertainty of a metric over a test set whose clips are the independent units. Numpy only."""

from __future__ import annotations

import numpy as np


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of per-clip ``values`` (N,): ``std(ddof=1) / sqrt(n)`` over the finite ones.

    NaN entries (clips with nothing to score) are left out; fewer than two finite values give NaN."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan")
    return float(np.std(v, ddof=1) / np.sqrt(v.size))
