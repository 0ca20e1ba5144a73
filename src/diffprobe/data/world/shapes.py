"""Object categories of Probe World: a silhouette (shape) and a texture family per category.

Shapes live in local object coordinates ``(u, v)`` (u right, v down, the object's half-size is 1) and fit in the
unit disk, so an object of half-size ``s`` never reaches further than ``s`` from its centre. Every test below uses
only ``+ - * /`` and comparisons, so masks are bit-identical on any IEEE-754 machine.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Texture families (see :mod:`diffprobe.data.world.textures`).
FAMILIES: list[str] = ["solid", "stripes", "checker", "dots", "rings", "noise"]

#: Category names; the category id is the index. Each has a unique shape and a fixed texture family.
CATEGORIES: list[str] = ["disk", "square", "triangle", "star", "ring", "cross", "crescent", "hourglass", "half_disk",
                         "ellipse"]

#: category id -> texture family id.
CATEGORY_FAMILY: list[int] = [FAMILIES.index(f) for f in
                              ["dots", "checker", "stripes", "solid", "solid", "stripes", "noise", "checker", "rings",
                               "dots"]]


def _convex(u: np.ndarray, v: np.ndarray, verts: list[tuple[float, float]]) -> np.ndarray:
    """Inside test for a convex polygon (vertices in either order) by edge functions."""
    cu = sum(p[0] for p in verts) / len(verts)
    cv = sum(p[1] for p in verts) / len(verts)
    inside = np.ones(u.shape, dtype=bool)
    for (au, av), (bu, bv) in zip(verts, verts[1:] + verts[:1], strict=True):
        sign = 1.0 if (bu - au) * (cv - av) - (bv - av) * (cu - au) >= 0 else -1.0
        inside &= sign * ((bu - au) * (v - av) - (bv - av) * (u - au)) >= 0
    return inside


def _star_verts(points: int, outer: float, inner: float) -> list[tuple[float, float]]:
    ang = np.arange(2 * points) * np.pi / points - np.pi / 2  # first tip points up (v < 0)
    rad = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    # rounded to a 2^-20 grid so a libm difference of one ulp cannot change the vertices
    return [(float(np.round(r * np.cos(a) * 2**20) / 2**20), float(np.round(r * np.sin(a) * 2**20) / 2**20))
            for r, a in zip(rad, ang, strict=True)]


_STAR = _star_verts(5, 1.0, 0.45)
_TRIANGLE = [(0.0, -1.0), (0.8660254, 0.5), (-0.8660254, 0.5)]


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    fan = _STAR + _STAR[:1]
    out = np.zeros(u.shape, dtype=bool)
    for a, b in zip(fan[:-1], fan[1:], strict=True):
        out |= _convex(u, v, [(0.0, 0.0), a, b])
    return out


SHAPES: list[Callable[[np.ndarray, np.ndarray], np.ndarray]] = [
    lambda u, v: u * u + v * v <= 0.92 * 0.92,  # disk
    lambda u, v: (np.abs(u) <= 0.68) & (np.abs(v) <= 0.68),  # square
    lambda u, v: _convex(u, v, _TRIANGLE),  # triangle
    _star,  # five-pointed star
    lambda u, v: ((u * u + v * v) <= 0.95 * 0.95) & ((u * u + v * v) >= 0.5 * 0.5),  # ring
    lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.92)) | ((np.abs(u) <= 0.92) & (np.abs(v) <= 0.3)),  # cross
    lambda u, v: (u * u + v * v <= 0.92 * 0.92) & ((u - 0.45) * (u - 0.45) + v * v > 0.7 * 0.7),  # crescent
    lambda u, v: (_convex(u, v, [(-0.65, -0.75), (0.65, -0.75), (0.12, 0.0), (-0.12, 0.0)])
                  | _convex(u, v, [(-0.65, 0.75), (0.65, 0.75), (0.12, 0.0), (-0.12, 0.0)])),  # hourglass
    lambda u, v: (u * u + (v - 0.3) * (v - 0.3) <= 0.95 * 0.95) & (v <= 0.3),  # half disk
    lambda u, v: u * u / (0.95 * 0.95) + v * v / (0.5 * 0.5) <= 1.0,  # ellipse
]

assert len(SHAPES) == len(CATEGORIES) == len(CATEGORY_FAMILY)


def shape_mask(category: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of category ``category``'s silhouette at local coordinates ``(u, v)`` (any equal shapes)."""
    return SHAPES[category](u, v)
