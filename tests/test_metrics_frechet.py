"""Fréchet distance against its closed form for diagonal covariances, and feature statistics by hand."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from diffprobe.metrics import feature_statistics, frechet_distance, psd_sqrt


def test_feature_statistics_hand_values() -> None:
    feats = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    mu, sigma = feature_statistics(feats)
    np.testing.assert_allclose(mu, [1.0, 1.0])
    np.testing.assert_allclose(sigma, np.diag([4 / 3, 4 / 3]))  # unbiased: sum of 4 squared ±1 over N − 1 = 3
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(feats[:1])


def test_diagonal_closed_form() -> None:
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 0.25])
    # |Δμ|² = 1 + 0 + 4; Σ(√a − √b)² = 1 + 1 + 2.5²
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(5 + 8.25)
    # the distance is invariant under a common rotation, which makes the covariances non-diagonal
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    assert frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T) == pytest.approx(13.25)
    # singular covariances (zero eigenvalues) are fine: |√1 − 0|² + |0 − √1|²
    assert frechet_distance(mu1, np.diag([1.0, 0, 0]), mu1, np.diag([0, 1.0, 0])) == pytest.approx(2.0)


def test_identical_inputs_give_zero() -> None:
    feats = np.random.default_rng(1).normal(size=(50, 6)) @ np.random.default_rng(2).normal(size=(6, 6))
    mu, sigma = feature_statistics(feats)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    root = psd_sqrt(sigma)
    np.testing.assert_allclose(root @ root, sigma, atol=1e-9)
    with pytest.raises(ValueError, match="sigma"):
        frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


def test_metrics_package_does_not_import_torch() -> None:
    code = "import sys, diffprobe.metrics; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
