"""Camera paths of Probe World: still, pan, tilt, dolly and orbit, each eased along a smooth path.

A camera is a pinhole at ``pos`` with camera-to-world rotation ``rot``; camera axes are x right, y down, z forward.
The world-to-camera matrix of the Clip contract is ``[[rot.T, -rot.T @ pos], [0, 0, 0, 1]]``.
"""

from __future__ import annotations

import numpy as np

from diffprobe.data.world.motions import qcos, qsin


def rotation(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Camera-to-world rotations (T, 3, 3) for yaw (about y, positive turns right) and pitch (positive looks up)."""
    cy, sy, cp, sp = qcos(yaw), qsin(yaw), qcos(pitch), qsin(pitch)
    zero = np.zeros_like(cy)
    rows = [[cy, sy * sp, sy * cp], [zero, cp, -sp], [-sy, cy * sp, cy * cp]]  # R_y(yaw) @ R_x(pitch), written out
    return np.stack([np.stack(r, -1) for r in rows], -2)


def camera_path(kind: str, rng: np.random.Generator, s: np.ndarray, pivot_z: float,
                amount: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (T, 3, 3) camera-to-world and position (T, 3) along path ``kind``.

    ``s`` (T,) is normalised time; ``pivot_z`` is the depth the orbit turns around; ``amount`` scales amplitudes.
    Every path starts from a slightly jittered orientation. Always draws four uniforms.
    """
    a0, a1, a2, a3 = rng.random(4)
    e = s * s * (3.0 - 2.0 * s) - 0.5  # (T,) smoothstep easing, centred: -0.5 -> 0.5
    sign = 1.0 if a3 < 0.5 else -1.0
    yaw = np.full(len(s), np.deg2rad(6.0 * (a0 - 0.5)))  # (T,)
    pitch = np.full(len(s), np.deg2rad(6.0 * (a1 - 0.5)))  # (T,)
    pos = np.zeros((len(s), 3))  # (T, 3)
    if kind == "still":
        pass
    elif kind == "pan":
        yaw = yaw + sign * amount * np.deg2rad(8.0 + 6.0 * a2) * e
    elif kind == "tilt":
        pitch = pitch + sign * amount * np.deg2rad(6.0 + 4.0 * a2) * e
    elif kind == "dolly":
        pos[:, 2] = sign * amount * (0.6 + 0.4 * a2) * e
    elif kind == "orbit":
        alpha = sign * amount * np.deg2rad(16.0 + 10.0 * a2) * e  # (T,) angle around the pivot
        yaw = yaw + alpha
        pos[:, 0] = -pivot_z * qsin(alpha)
        pos[:, 2] = pivot_z * (1.0 - qcos(alpha))
    else:
        raise ValueError(f"unknown camera path {kind!r}")
    return rotation(yaw, pitch), pos


def world_to_camera(rot: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """World-to-camera 4x4 matrices (T, 4, 4) from camera-to-world ``rot`` (T, 3, 3) and position ``pos`` (T, 3)."""
    t = len(rot)
    out = np.zeros((t, 4, 4))
    out[:, :3, :3] = np.swapaxes(rot, 1, 2)
    for i in range(3):  # -R^T C, written out (no BLAS, so bit-identical everywhere)
        out[:, i, 3] = -(rot[:, 0, i] * pos[:, 0] + rot[:, 1, i] * pos[:, 1] + rot[:, 2, i] * pos[:, 2])
    out[:, 3, 3] = 1.0
    return out
