"""Motion classes of Probe World objects and their time-reversal pairs.

Every class comes with a partner that is the same motion played backwards (left-to-right / right-to-left, upward /
downward, towards / away from the camera, clockwise / counter-clockwise spin and circling), so a single frame never
tells the class: only the order of frames does. World axes follow the camera: x right, y down, z forward (depth);
"clockwise" is as seen on screen.
"""

from __future__ import annotations

import numpy as np

MOTIONS: list[str] = ["left_to_right", "right_to_left", "upward", "downward", "towards", "away", "spin_cw",
                      "spin_ccw", "circle_cw", "circle_ccw"]

#: motion id -> the id of the same motion played backwards.
MOTION_REVERSE: dict[int, int] = {i: i ^ 1 for i in range(len(MOTIONS))}

_Q = 2.0**24


def qcos(x: np.ndarray) -> np.ndarray:
    """cos rounded to a 2^-24 grid: a one-ulp libm difference between machines cannot change the result."""
    return np.round(np.cos(x) * _Q) / _Q


def qsin(x: np.ndarray) -> np.ndarray:
    """sin rounded to a 2^-24 grid (see :func:`qcos`)."""
    return np.round(np.sin(x) * _Q) / _Q


def trajectory(motion: int, rng: np.random.Generator, centre: np.ndarray, theta0: float, s: np.ndarray,
               focal: float, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Position (T, 3) and in-plane angle (T,) of an object doing ``motion`` around ``centre`` (3,).

    ``s`` (T,) is normalised time in [0, 1]; amplitudes are fractions of the view at the object's depth
    (``focal`` in image widths, ``aspect`` = height / width), so paths look alike at every resolution.
    Always draws three uniforms, whatever the class.
    """
    a1, a2, a3 = rng.random(3)
    c = s - 0.5  # (T,) centred time: reversing the frames maps c -> -c
    x, y, z = (float(v) for v in centre)
    view_w, view_h = z / focal, z * aspect / focal  # world size of the view at depth z
    pos = np.tile(np.array([x, y, z], dtype=np.float64), (len(s), 1))  # (T, 3)
    theta = np.full(len(s), theta0, dtype=np.float64)  # (T,)
    name = MOTIONS[motion]
    sign = 1.0 if motion % 2 == 0 else -1.0
    if name in ("left_to_right", "right_to_left"):
        pos[:, 0] = x + sign * c * (0.45 + 0.25 * a1) * view_w
    elif name in ("upward", "downward"):
        pos[:, 1] = y - sign * c * (0.35 + 0.15 * a1) * view_h
    elif name in ("towards", "away"):
        pos[:, 2] = z * (1.0 - sign * c * (0.5 + 0.2 * a1))
    elif name in ("spin_cw", "spin_ccw"):
        theta = theta0 + sign * c * np.deg2rad(100.0 + 80.0 * a1)
    elif name in ("circle_cw", "circle_ccw"):
        radius = (0.12 + 0.08 * a1) * view_w
        beta = 2.0 * np.pi * a2 + sign * s * np.deg2rad(270.0 + 90.0 * a3)
        pos[:, 0] = x + radius * qcos(beta)
        pos[:, 1] = y + radius * qsin(beta)
    else:  # pragma: no cover - MOTIONS and this table are edited together
        raise ValueError(f"unknown motion {motion}")
    return pos, theta


def reverse_clip(clip: dict) -> dict:
    """The clip played backwards: every time axis flipped and ``action`` mapped to its pair (:data:`MOTION_REVERSE`).

    Works on Probe World clips and on shard reads (numpy arrays, time axis per the Clip contract).
    """
    out = dict(clip)
    for key, axis in (("video", 0), ("depth", 0), ("camera", 0), ("tracks", 1), ("visible", 1), ("boxes", 1),
                      ("box_visible", 1)):
        if key in clip:
            out[key] = np.ascontiguousarray(np.flip(clip[key], axis=axis))
    if "action" in clip:
        out["action"] = MOTION_REVERSE[int(clip["action"])]
    return out
