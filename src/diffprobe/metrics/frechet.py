"""Fréchet distance between Gaussians fitted to feature sets (FID / FVD). Numpy only, no scipy.

FD = |μ1 − μ2|² + tr(Σ1) + tr(Σ2) − 2 tr((Σ1 Σ2)^½). The last trace uses the identity
tr((Σ1 Σ2)^½) = Σ √λ_i with λ_i the eigenvalues of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½ (similar to Σ1 Σ2), with
Σ1^½ from a symmetric eigendecomposition. Tiny negative eigenvalues from round-off are clipped to 0 in both steps.
"""

from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) (divisor N − 1) of ``features`` (N, D), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got {features.shape}")
    mu = features.mean(axis=0)  # (D,)
    centred = features - mu  # (N, D)
    sigma = centred.T @ centred / (features.shape[0] - 1)  # (D, D)
    return mu, sigma


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root (D, D) of a symmetric positive semi-definite matrix; negative eigenvalues -> 0."""
    sym = (matrix + matrix.T) / 2
    eigval, eigvec = np.linalg.eigh(sym)  # (D,), (D, D)
    return (eigvec * np.sqrt(np.clip(eigval, 0, None))) @ eigvec.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); mu (D,), sigma (D, D) symmetric PSD."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"expected mu (D,) and sigma (D, D) for both sets, got {mu1.shape}, {sigma1.shape}, "
                         f"{mu2.shape}, {sigma2.shape}")
    root1 = psd_sqrt(sigma1)  # (D, D)
    inner = root1 @ sigma2 @ root1  # (D, D), symmetric PSD up to round-off
    eigval = np.linalg.eigvalsh((inner + inner.T) / 2)  # (D,)
    tr_covmean = float(np.sum(np.sqrt(np.clip(eigval, 0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
