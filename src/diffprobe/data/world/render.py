"""Vectorised ray casting with a z-buffer: many Probe World scenes rendered at once in numpy.

Every pixel centre casts a ray; the ray meets the background wall, the floor and each object's plane; an object
counts where its silhouette covers the hit point. The nearest hit wins (z-buffer) and is shaded with its texture.
All arrays are (B, T, H, W) over clips, frames and pixels. Geometry is written out with elementwise ``+ - * /`` (no
BLAS), so one clip renders to the same bytes alone or in any batch, on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffprobe.data.world.scene import FIRST_OBJECT, FLOOR, WALL, Scene
from diffprobe.data.world.shapes import shape_mask
from diffprobe.data.world.textures import shade

#: Nearest depth (camera z) a surface is drawn at.
NEAR = 0.1


def pixel_rays(height: int, width: int, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame ray slopes of pixel centres: x (W,) and y (H,); the ray is (x, y, 1), so its z-depth is the
    ray parameter. ``focal`` is in image widths; pixel centres sit at +0.5."""
    fpx = focal * width
    return (np.arange(width) + 0.5 - width / 2) / fpx, (np.arange(height) + 0.5 - height / 2) / fpx


def _stack_scenes(scenes: Sequence[Scene]) -> dict[str, np.ndarray]:
    """Stack scenes into arrays over B, padding objects to the largest K (padded objects are inactive)."""
    kmax = max(sc.num_objects for sc in scenes)
    b, t = len(scenes), scenes[0].cam_pos.shape[0]
    out = {
        "rot": np.stack([sc.cam_rot for sc in scenes]),  # (B, T, 3, 3)
        "pos": np.stack([sc.cam_pos for sc in scenes]),  # (B, T, 3)
        "wall_z": np.array([sc.wall_z for sc in scenes]),  # (B,)
        "floor_y": np.array([sc.floor_y for sc in scenes]),  # (B,)
        "obj_pos": np.zeros((b, kmax, t, 3)),
        "obj_rot": np.zeros((b, kmax, t, 2)),
        "obj_size": np.ones((b, kmax)),
        "category": np.zeros((b, kmax), dtype=np.int64),
        "active": np.zeros((b, kmax), dtype=bool),
        "gain": np.stack([sc.gain for sc in scenes]),  # (B, 3)
        "bias": np.array([sc.bias for sc in scenes]),  # (B,)
    }
    for i, sc in enumerate(scenes):
        k = sc.num_objects
        out["obj_pos"][i, :k] = sc.obj_pos
        out["obj_rot"][i, :k] = sc.obj_rot
        out["obj_size"][i, :k] = sc.obj_size
        out["category"][i, :k] = sc.category
        out["active"][i, :k] = True
    surf = {}
    for key in scenes[0].surf:
        rows = [sc.surf[key] for sc in scenes]
        pad = np.zeros((b, 2 + kmax) + rows[0].shape[1:], dtype=rows[0].dtype)
        for i, r in enumerate(rows):
            pad[i, : len(r)] = r
        surf[key] = pad.reshape((b * (2 + kmax),) + rows[0].shape[1:])  # row b * S + s
    out["surf"] = surf
    return out


def render(scenes: Sequence[Scene], height: int, width: int, focal: float) -> dict[str, np.ndarray]:
    """Render scenes of equal length T (geometry and shading in float32).

    Returns video uint8 (B, T, H, W, 3), depth float32 (B, T, H, W) (camera-frame z), surface int8 (B, T, H, W)
    (0 wall, 1 floor, 2 + k object k), boxes float32 (B, K, T, 4) (x0, y0, x1, y1) of each object's silhouette
    (occluded parts included, clipped to the frame; zeros when it is out of frame), box_visible bool (B, K, T)
    (some pixel of the object is seen), K = the largest object count in the batch.
    """
    st = _stack_scenes(scenes)
    b, kmax = st["active"].shape
    ft = np.float32
    rx, ry = (r.astype(ft) for r in pixel_rays(height, width, focal))
    rot, pos = st["rot"].astype(ft), st["pos"].astype(ft)

    def bt(a: np.ndarray) -> np.ndarray:  # (B, T) -> (B, T, 1, 1) float32
        return a.astype(ft)[:, :, None, None]

    # world-frame ray directions (B, T, H, W): rot @ (rx, ry, 1)
    dwx = bt(rot[..., 0, 0]) * rx + bt(rot[..., 0, 1]) * ry[:, None] + bt(rot[..., 0, 2])
    dwy = bt(rot[..., 1, 0]) * rx + bt(rot[..., 1, 1]) * ry[:, None] + bt(rot[..., 1, 2])
    dwz = bt(rot[..., 2, 0]) * rx + bt(rot[..., 2, 1]) * ry[:, None] + bt(rot[..., 2, 2])
    cx, cy, cz = bt(pos[..., 0]), bt(pos[..., 1]), bt(pos[..., 2])

    # background wall z = wall_z: every ray meets it (the view never turns away from +z)
    depth = (st["wall_z"].astype(ft)[:, None, None, None] - cz) / dwz  # (B, T, H, W)
    surface = np.full(depth.shape, WALL, dtype=np.int8)
    tu, tv = cx + depth * dwx, cy + depth * dwy  # texture coordinates of the winning surface

    # floor y = floor_y, hit only by rays going down
    down = dwy > 0
    lam = (st["floor_y"].astype(ft)[:, None, None, None] - cy) / np.where(down, dwy, ft(1.0))
    closer = down & (lam > NEAR) & (lam < depth)
    depth = np.where(closer, lam, depth)
    surface[closer] = FLOOR
    tu = np.where(closer, cx + lam * dwx, tu)
    tv = np.where(closer, cz + lam * dwz, tv)

    t = depth.shape[1]
    boxes = np.zeros((b, kmax, t, 4), dtype=np.float32)
    box_visible = np.zeros((b, kmax, t), dtype=bool)
    sils = []
    for k in range(kmax):
        rows = np.nonzero(st["active"][:, k])[0]
        sel = slice(None) if len(rows) == b else rows  # clips that have an object k (no copy when all do)
        op, orr = st["obj_pos"][sel, k], st["obj_rot"][sel, k]  # (b', T, 3), (b', T, 2)
        size = st["obj_size"][sel, k].astype(ft)[:, None, None, None]
        lam = (bt(op[..., 2]) - cz[sel]) / dwz[sel]  # (b', T, H, W) depth of the object's plane
        hx = cx[sel] + lam * dwx[sel] - bt(op[..., 0])
        hy = cy[sel] + lam * dwy[sel] - bt(op[..., 1])
        c, s = bt(orr[..., 0]), bt(orr[..., 1])
        u = (c * hx + s * hy) / size
        v = (c * hy - s * hx) / size
        near = (u * u + v * v <= 1.0) & (lam > NEAR)  # every shape fits in the unit disk
        sil = np.zeros(near.shape, dtype=bool)
        cats = st["category"][sel, k]
        u1, v1, sil1 = u.reshape(-1), v.reshape(-1), sil.reshape(-1)
        for cat in np.unique(cats):
            idx = np.flatnonzero(near & (cats == cat)[:, None, None, None])
            sil1[idx] = shape_mask(int(cat), u1[idx], v1[idx])
        d_old = depth[sel]
        closer = sil & (lam < d_old)
        depth[sel] = np.where(closer, lam, d_old)
        surface[sel] = np.where(closer, np.int8(FIRST_OBJECT + k), surface[sel])
        tu[sel] = np.where(closer, u, tu[sel])
        tv[sel] = np.where(closer, v, tv[sel])
        sils.append((sel, sil))

    for k, (sel, sil) in enumerate(sils):
        cols, rws = sil.any(axis=2), sil.any(axis=3)  # (b', T, W), (b', T, H)
        seen = cols.any(axis=-1)  # (b', T)
        x0, x1 = cols.argmax(-1), width - cols[..., ::-1].argmax(-1)
        y0, y1 = rws.argmax(-1), height - rws[..., ::-1].argmax(-1)
        boxes[sel, k] = np.where(seen[..., None], np.stack([x0, y0, x1, y1], -1), 0).astype(np.float32)
        box_visible[:, k] = (surface == FIRST_OBJECT + k).any(axis=(2, 3))

    # shading: one texture lookup per pixel, with the parameters of the surface that won it
    n_surf = 2 + kmax
    gidx = (np.arange(b, dtype=np.int32)[:, None, None, None] * n_surf + surface).reshape(-1)
    rgb = shade(st["surf"], gidx, tu.reshape(-1), tv.reshape(-1)).reshape(depth.shape + (3,))  # (B, T, H, W, 3)
    rgb = rgb * st["gain"].astype(ft)[:, None, None, None, :] + st["bias"].astype(ft)[:, None, None, None, None]
    video = np.floor(np.clip(rgb, 0.0, 1.0) * ft(255.0) + ft(0.5)).astype(np.uint8)
    return {"video": video, "depth": depth, "surface": surface, "boxes": boxes, "box_visible": box_visible}
