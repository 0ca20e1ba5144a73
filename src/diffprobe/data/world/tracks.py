"""Point tracks of Probe World: points glued to objects and static background points, projected and tested
against the z-buffer for visibility."""

from __future__ import annotations

import numpy as np

from diffprobe.data.world.render import NEAR
from diffprobe.data.world.scene import FIRST_OBJECT, FLOOR, WALL, Scene
from diffprobe.data.world.shapes import shape_mask


def object_track_counts(num_tracks: int, fraction: float, num_objects: int) -> list[int]:
    """Tracks per object: ``round(num_tracks * fraction)`` object points, half on the main object (all of them when
    it is alone), the rest shared evenly by the distractors (earlier ones get the remainder)."""
    n_obj = int(round(num_tracks * fraction))
    if num_objects == 1:
        return [n_obj]
    main = (n_obj + 1) // 2
    rest = n_obj - main
    per, extra = divmod(rest, num_objects - 1)
    return [main] + [per + (1 if j < extra else 0) for j in range(num_objects - 1)]


def sample_tracks(scene: Scene, num_tracks: int, fraction: float, aspect: float, focal: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """World positions (N, T, 3) and surface ids (N,) of the clip's tracks: object points (object 0 first), then
    background points (on the wall or floor, chosen where a random pixel of a random frame looks)."""
    t = scene.cam_pos.shape[0]
    points, surf = [], []
    for j, m in enumerate(object_track_counts(num_tracks, fraction, scene.num_objects)):
        uv = np.zeros((0, 2))
        while len(uv) < m:  # rejection sampling inside the silhouette
            cand = 2.0 * rng.random((4 * m + 16, 2)) - 1.0
            uv = np.concatenate([uv, cand[shape_mask(int(scene.category[j]), cand[:, 0], cand[:, 1])]])
        uv = uv[:m]
        c, s = scene.obj_rot[j, None, :, 0], scene.obj_rot[j, None, :, 1]  # (1, T)
        size = scene.obj_size[j]
        u, v = uv[:, 0, None], uv[:, 1, None]  # (m, 1)
        p = np.empty((m, t, 3))
        p[..., 0] = scene.obj_pos[j, None, :, 0] + size * (c * u - s * v)
        p[..., 1] = scene.obj_pos[j, None, :, 1] + size * (s * u + c * v)
        p[..., 2] = scene.obj_pos[j, None, :, 2]
        points.append(p)
        surf.append(np.full(m, FIRST_OBJECT + j))
    n_bg = num_tracks - sum(len(p) for p in points)
    q = rng.random((n_bg, 3))
    tq = np.minimum((q[:, 0] * t).astype(np.int64), t - 1)  # (n_bg,) frame each point is picked in
    rx, ry = (q[:, 1] - 0.5) / focal, (q[:, 2] - 0.5) * aspect / focal  # camera-frame ray slopes
    rot, pos = scene.cam_rot[tq], scene.cam_pos[tq]  # (n_bg, 3, 3), (n_bg, 3)
    d = [rot[:, i, 0] * rx + rot[:, i, 1] * ry + rot[:, i, 2] for i in range(3)]
    lam = (scene.wall_z - pos[:, 2]) / d[2]
    lam_f = (scene.floor_y - pos[:, 1]) / np.where(d[1] > 0, d[1], 1.0)
    on_floor = (d[1] > 0) & (lam_f > NEAR) & (lam_f < lam)
    lam = np.where(on_floor, lam_f, lam)
    bg = np.stack([pos[:, i] + lam * d[i] for i in range(3)], -1)  # (n_bg, 3) static world points
    points.append(np.repeat(bg[:, None], t, axis=1))
    surf.append(np.where(on_floor, FLOOR, WALL))
    return np.concatenate(points), np.concatenate(surf).astype(np.int16)


def project(scene: Scene, points: np.ndarray, height: int, width: int,
            focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions (N, T, 2) as (x, y), pixel centres at +0.5, and camera-frame depths (N, T) of world points
    (N, T, 3)."""
    rot, pos = scene.cam_rot[None], scene.cam_pos[None]  # (1, T, 3, 3), (1, T, 3)
    d = points - pos  # (N, T, 3)
    xc = [rot[..., 0, i] * d[..., 0] + rot[..., 1, i] * d[..., 1] + rot[..., 2, i] * d[..., 2] for i in range(3)]
    fpx = focal * width
    xy = np.stack([fpx * xc[0] / xc[2] + width / 2, fpx * xc[1] / xc[2] + height / 2], -1)
    return xy, xc[2]


def visibility(xy: np.ndarray, z: np.ndarray, track_surface: np.ndarray, surface: np.ndarray,
               depth: np.ndarray) -> np.ndarray:
    """Visible (N, T): in front of the camera, inside the frame, and the pixel holding the point shows either the
    point's own surface or a surface behind it (occluded = another surface in front of the point there)."""
    _, height, width = surface.shape
    inside = (z > NEAR) & (xy[..., 0] >= 0) & (xy[..., 0] < width) & (xy[..., 1] >= 0) & (xy[..., 1] < height)
    px = np.clip(np.floor(xy[..., 0]), 0, width - 1).astype(np.int64)
    py = np.clip(np.floor(xy[..., 1]), 0, height - 1).astype(np.int64)
    tt = np.broadcast_to(np.arange(surface.shape[0]), px.shape)
    other = surface[tt, py, px] != track_surface[:, None]
    occluded = other & (depth[tt, py, px] < z)
    return inside & ~occluded
