"""Procedural textures and colours of Probe World, evaluated per pixel with per-surface parameters.

A texture is a weight ``w`` in [0, 1] that mixes a surface's two colours: ``rgb = c1 + (c2 - c1) * w``. The weight
is a pattern of the surface's family (stripes, checker, ...) blended with smooth value noise, so that two objects of
one category never look the same. Only ``+ - * /``, ``sqrt``, ``floor`` and comparisons are used per pixel, which
IEEE-754 rounds exactly: the same parameters give bit-identical pixels on any machine.
"""

from __future__ import annotations

import math

import numpy as np

from diffprobe.data.world.shapes import FAMILIES

#: Side of the periodic value-noise grid of every surface.
NOISE_GRID = 8


def tri(x: np.ndarray) -> np.ndarray:
    """Triangle wave of period 1: 1 at integers, 0 at half-integers."""
    return np.abs(2.0 * (x - np.floor(x)) - 1.0)


def value_noise(grids: np.ndarray, gidx: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smooth periodic value noise in [0, 1].

    grids: (M, G, G) random values per surface; gidx: (P,) which grid each sample uses; a, b: (P,) coordinates in
    grid cells. Bilinear interpolation with a smoothstep fade.
    """
    g = grids.shape[-1]
    flat = grids.reshape(-1)
    fa, fb = np.floor(a), np.floor(b)
    ta, tb = a - fa, b - fb
    ta = ta * ta * (3.0 - 2.0 * ta)
    tb = tb * tb * (3.0 - 2.0 * tb)
    i0 = fa.astype(np.int32) % g
    j0 = fb.astype(np.int32) % g
    i1, j1 = (i0 + 1) % g, (j0 + 1) % g
    row0, row1 = gidx * (g * g) + j0 * g, gidx * (g * g) + j1 * g
    v00, v01 = flat[row0 + i0], flat[row0 + i1]
    v10, v11 = flat[row1 + i0], flat[row1 + i1]
    top = v00 + (v01 - v00) * ta
    bot = v10 + (v11 - v10) * ta
    return top + (bot - top) * tb


def pattern(family: int, u: np.ndarray, v: np.ndarray, freq: np.ndarray, phase: np.ndarray, ca: np.ndarray,
            sa: np.ndarray) -> np.ndarray:
    """Weight in [0, 1] of texture family ``family`` at coordinates (u, v) (all arrays (P,)).

    ``freq`` is in periods per coordinate unit, ``phase`` shifts the pattern, ``(ca, sa)`` is its orientation.
    """
    name = FAMILIES[family]
    ru = ca * u + sa * v
    rv = ca * v - sa * u
    if name == "solid":  # a linear shading across the object
        return np.clip(0.5 + 0.5 * ru, 0.0, 1.0)
    if name == "stripes":
        return tri(freq * ru + phase)
    if name == "checker":
        su = 2.0 * tri(freq * ru + phase) - 1.0
        sv = 2.0 * tri(freq * rv + phase) - 1.0
        return np.clip(0.5 + 2.0 * su * sv, 0.0, 1.0)
    if name == "dots":
        fu = freq * ru + phase
        fv = freq * rv + phase
        du = fu - np.floor(fu) - 0.5
        dv = fv - np.floor(fv) - 0.5
        return np.clip((0.1 - du * du - dv * dv) * 25.0 + 0.5, 0.0, 1.0)
    if name == "rings":
        return tri(freq * np.sqrt(u * u + v * v) + phase)
    if name == "noise":  # the noise term of :func:`shade` carries it
        return np.zeros_like(u)
    raise ValueError(f"unknown texture family {family}")


def shade(surf: dict[str, np.ndarray], gidx: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] (P, 3) of surfaces ``gidx`` (P,) at their texture coordinates (u, v) (P,), in u's dtype.

    ``surf`` holds per-surface rows: family (M,), colours (M, 2, 3), pattern (M, 4) = (freq, phase, cos, sin),
    noise (M, 4) = (freq, mix, offset_u, offset_v), grid (M, G, G).
    """
    dt = u.dtype
    m = len(surf["family"])
    table = np.concatenate([surf["pattern"], surf["noise"], surf["colours"].reshape(m, 6)], 1).astype(dt)  # (M, 14)
    par = np.take(table, gidx, axis=0)  # (P, 14): one gather for every per-pixel parameter
    fam = np.take(surf["family"], gidx)
    w = np.zeros(u.shape, dtype=dt)
    for f in np.unique(fam):
        sel = np.flatnonzero(fam == f)
        p = par[sel]
        w[sel] = pattern(int(f), u[sel], v[sel], p[:, 0], p[:, 1], p[:, 2], p[:, 3])
    n = value_noise(surf["grid"].astype(dt), gidx, u * par[:, 4] + par[:, 6], v * par[:, 4] + par[:, 7])
    mix = np.where(fam == FAMILIES.index("noise"), dt.type(1.0), par[:, 5])
    w = (1.0 - mix) * w + mix * n
    return par[:, 8:11] + (par[:, 11:14] - par[:, 8:11]) * w[:, None]


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] (hue wraps) -> RGB (3,) in [0, 1]; piecewise linear, so exact on any machine."""
    h6 = (h - math.floor(h)) * 6.0
    i = int(math.floor(h6)) % 6
    f = h6 - math.floor(h6)
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])
