"""The standard error of a split metric, from per-clip values."""

from __future__ import annotations

import math

import numpy as np
import pytest

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


def test_paired_difference_by_hand() -> None:
    from diffprobe.metrics import paired_difference

    a = np.array([0.5, 0.7, np.nan, 0.9, 0.6])
    b = np.array([0.4, 0.5, 0.3, 0.9, 0.2])
    d = np.array([0.1, 0.2, 0.0, 0.4])  # the clip b alone scores is left out
    out = paired_difference(a, b)
    se = np.std(d, ddof=1) / 2
    assert out["n"] == 4 and out["diff"] == pytest.approx(0.175) and out["se"] == pytest.approx(se)
    assert out["z"] == pytest.approx(0.175 / se) and out["lo"] <= 0.175 <= out["hi"]
    assert out["lo"] >= 0.0 and out["hi"] <= 0.4  # a bootstrap mean stays within the differences
    worse = paired_difference(a, b, higher_is_better=False)  # errors: lower is better, so a is worse
    assert worse["diff"] == pytest.approx(-0.175) and worse["z"] == pytest.approx(-out["z"])
    assert paired_difference(a, b) == out  # seeded: the same interval every time
    assert np.isnan(paired_difference([1.0], [0.0])["z"])
