"""Sampling one Probe World scene (camera path, background, objects, motions, colours) from a seed.

A scene is drawn in resolution-free units (fractions of the view, normalised time), so the same seed gives the same
scene at every preset's size. Only numpy's PCG64 uniforms are drawn (platform-independent streams); angles go through
quantised trig (:func:`~diffprobe.data.world.motions.qcos`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffprobe.data.world.camera import camera_path
from diffprobe.data.world.config import ProbeWorldConfig
from diffprobe.data.world.motions import MOTIONS, qcos, qsin, trajectory
from diffprobe.data.world.shapes import CATEGORIES, CATEGORY_FAMILY, FAMILIES
from diffprobe.data.world.textures import NOISE_GRID, hsv_to_rgb

#: Surface ids in the z-buffer: background wall, floor, then object k is ``FIRST_OBJECT + k``.
WALL, FLOOR, FIRST_OBJECT = 0, 1, 2


@dataclass
class Scene:
    """One clip's scene. T frames, K objects, S = 2 + K surfaces (wall, floor, objects)."""

    cam_rot: np.ndarray  # (T, 3, 3) camera-to-world rotation
    cam_pos: np.ndarray  # (T, 3) camera centre in the world
    wall_z: float  # the background wall is the plane z = wall_z
    floor_y: float  # the floor is the plane y = floor_y (below the camera: y points down)
    obj_pos: np.ndarray  # (K, T, 3) object centres
    obj_rot: np.ndarray  # (K, T, 2) (cos, sin) of the in-plane angle (clockwise on screen)
    obj_size: np.ndarray  # (K,) half-size in world units (shapes fit in a disk of this radius)
    category: np.ndarray  # (K,) int
    motion: np.ndarray  # (K,) int
    surf: dict[str, np.ndarray]  # per-surface texture rows (S, ...) for textures.shade
    gain: np.ndarray  # (3,) per-channel colour gain
    bias: float  # brightness offset
    camera_path: str

    @property
    def num_objects(self) -> int:
        return len(self.category)


def _object_colours(rng: np.random.Generator) -> np.ndarray:
    """Two saturated colours (2, 3): a base colour and either a darker shade of it or a shifted hue."""
    h, s, v, mode, dv, dh = rng.random(6)
    c1 = hsv_to_rgb(h, 0.5 + 0.5 * s, 0.65 + 0.35 * v)
    darker = c1 * (0.25 + 0.25 * dv)
    c2 = darker if mode < 0.5 else hsv_to_rgb(h + 0.25 + 0.25 * dh, 0.5 + 0.5 * s, 0.5 + 0.4 * dv)
    return np.stack([c1, c2])


def _background_colours(rng: np.random.Generator) -> np.ndarray:
    """Two desaturated colours (2, 3) of similar hue, so objects stand out from the background, 0.3-0.55 apart in
    value (in random order), so the wall's and floor's textures, the only cue of camera motion that objects moving on
    their own do not blur, stay visible at 32 px."""
    h, s, v, dh, dv, order = rng.random(6)
    lo = 0.2 + 0.25 * v
    hi = lo + 0.3 + 0.25 * dv
    c1, c2 = hsv_to_rgb(h, 0.3 * s, lo), hsv_to_rgb(h + 0.2 * (dh - 0.5), 0.3 * s, hi)
    return np.stack([c1, c2]) if order < 0.5 else np.stack([c2, c1])


def _surface_row(rng: np.random.Generator, family: int, colours: np.ndarray, freq: tuple[float, float],
                 noise_freq: tuple[float, float], noise_mix: tuple[float, float]) -> dict[str, np.ndarray]:
    a = rng.random(6)
    angle = 2.0 * np.pi * a[2]
    return {
        "family": np.array(family),
        "colours": colours,
        "pattern": np.array([freq[0] + (freq[1] - freq[0]) * a[0], a[1], qcos(angle), qsin(angle)]),
        "noise": np.array([noise_freq[0] + (noise_freq[1] - noise_freq[0]) * a[3],
                           noise_mix[0] + (noise_mix[1] - noise_mix[0]) * a[4], NOISE_GRID * a[5], 0.0]),
        "grid": rng.random((NOISE_GRID, NOISE_GRID)),
    }


def sample_scene(config: ProbeWorldConfig, rng: np.random.Generator) -> Scene:
    """Draw one scene; the main object (index 0) has uniform category and motion, as do the distractors."""
    t = config.frames
    s = np.arange(t, dtype=np.float64) / (t - 1)  # (T,) normalised time
    aspect = config.height / config.width
    focal = config.focal
    k = int(rng.integers(config.min_objects, config.max_objects + 1))
    category = rng.integers(len(CATEGORIES), size=k)
    motion = rng.integers(len(MOTIONS), size=k)

    pos, rot, size = [], [], []
    floor_y = 1.6 + 0.4 * rng.random()
    wall_z = 11.0 + 3.0 * rng.random()
    for j in range(k):
        r = rng.random(5)
        if j == 0:  # main object: near the centre, 10-14 px across at 32 px
            z = 3.5 + 2.0 * r[0]
            half = 0.16 + 0.06 * r[1]
            off = 0.24 * (r[2:4] - 0.5)
        else:  # distractors: smaller, anywhere, in front of or behind the main object
            z = 2.5 + 5.5 * r[0]
            half = 0.06 + 0.06 * r[1]
            off = 1.2 * (r[2:4] - 0.5)
        centre = np.array([off[0] * z / focal, off[1] * z * aspect / focal, z])
        p, theta = trajectory(int(motion[j]), rng, centre, 2.0 * np.pi * r[4], s, focal, aspect)
        radius = half * float(p[:, 2].mean()) / focal
        lift = p[:, 1].max() + radius - (floor_y - 0.05)  # keep the whole object above the floor
        if lift > 0:
            p[:, 1] -= lift
        pos.append(p)
        rot.append(np.stack([qcos(theta), qsin(theta)], -1))
        size.append(radius)

    kinds = config.camera_paths
    kind = kinds[int(rng.integers(len(kinds)))]
    cam_rot, cam_pos = camera_path(kind, rng, s, float(pos[0][:, 2].mean()), config.camera_motion)

    bg_families = [FAMILIES.index(n) for n in ("stripes", "checker", "dots", "noise")]
    rows = [
        _surface_row(rng, bg_families[int(rng.integers(len(bg_families)))], _background_colours(rng),
                     (0.25, 0.6), (0.4, 0.8), (0.5, 0.8)),  # wall, coordinates (x, y) in world units
        _surface_row(rng, FAMILIES.index("checker"), _background_colours(rng), (0.4, 0.8), (0.4, 0.8),
                     (0.3, 0.5)),  # floor, coordinates (x, z)
    ]
    for j in range(k):
        rows.append(_surface_row(rng, CATEGORY_FAMILY[int(category[j])], _object_colours(rng), (0.8, 1.6),
                                 (1.0, 2.0), (0.1, 0.25)))  # object, local coordinates (u, v)
    surf = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    jit = rng.random(4)
    gain = 1.0 + config.colour_jitter * (2.0 * jit[:3] - 1.0)
    bias = config.colour_jitter * (jit[3] - 0.5)
    return Scene(cam_rot=cam_rot, cam_pos=cam_pos, wall_z=float(wall_z), floor_y=float(floor_y),
                 obj_pos=np.stack(pos), obj_rot=np.stack(rot), obj_size=np.array(size), category=category,
                 motion=motion, surf=surf, gain=gain, bias=float(bias), camera_path=kind)
