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


def test_a_proportions_standard_error_by_hand() -> None:
    from diffprobe.metrics import PROPORTIONS, metric_standard_error, proportion_standard_error

    # Agresti-Coull: 5 of 5 right -> p~ = (5 + 2) / (5 + 4) = 7/9, se = sqrt(7/9 * 2/9 / 9) = sqrt(14) / 27
    assert proportion_standard_error([1, 1, 1, 1, 1]) == pytest.approx(math.sqrt(14) / 27)  # 0.1386, not 0
    assert proportion_standard_error([0, 0, 0, 0, 0]) == pytest.approx(math.sqrt(14) / 27)  # none right: the same
    # 3 of 5 (a NaN clip left out): p~ = 5/9, se = sqrt(5/9 * 4/9 / 9) = sqrt(20) / 27
    assert proportion_standard_error([1, 0, np.nan, 1, 0, 1]) == pytest.approx(math.sqrt(20) / 27)
    assert proportion_standard_error([1.0]) == pytest.approx(math.sqrt(3 / 5 * 2 / 5 / 5))  # defined for one clip
    assert math.isnan(proportion_standard_error([np.nan]))
    with pytest.raises(ValueError, match="0 or 1"):
        proportion_standard_error([1.0, 0.5])
    # at n = 512 and p = 0.2 it is the plain s.e. std(ddof=1) / sqrt(n) to 4 decimals (the README's tables stand)
    outcomes = np.r_[np.ones(102), np.zeros(410)]
    assert round(proportion_standard_error(outcomes), 4) == round(standard_error(outcomes), 4) == 0.0177
    for k in range(80, 131):  # p from 0.16 to 0.25: never more than half a unit of the 4th decimal apart
        outcomes = np.r_[np.ones(k), np.zeros(512 - k)]
        assert abs(proportion_standard_error(outcomes) - standard_error(outcomes)) < 5e-5
    # top-1 is a proportion; every other metric keeps the mean's s.e.
    assert "top1" in PROPORTIONS and "abs_rel" not in PROPORTIONS
    assert metric_standard_error("top1", np.ones(5)) == pytest.approx(math.sqrt(14) / 27)
    assert metric_standard_error("abs_rel", np.ones(5)) == 0.0


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
