"""The standard error of a split metric, from per-clip values."""

from __future__ import annotations

import math

import numpy as np

from diffprobe.metrics import finite_mean, standard_error


def test_standard_error_by_hand() -> None:
    # values 1, 0, 1, 1: mean 0.75, sample variance ((0.25^2) * 3 + 0.75^2) / 3 = 0.25, s.e. sqrt(0.25 / 4) = 0.25
    assert standard_error(np.array([1.0, 0.0, 1.0, 1.0])) == 0.25
    # NaN clips (nothing to score) are left out
    assert standard_error(np.array([np.nan, 2.0, 4.0])) == math.sqrt(2.0 / 2)
    assert math.isnan(standard_error(np.array([3.0, np.nan])))  # one finite value: no spread
    assert standard_error(np.full(5, 0.7)) == 0.0


def test_finite_mean_leaves_out_nan_without_a_warning(recwarn) -> None:
    assert finite_mean([1.0, np.nan, 2.0]) == 1.5
    assert math.isnan(finite_mean([np.nan, np.nan]))  # the translation angle of a clip whose camera is still
    assert len(recwarn) == 0
