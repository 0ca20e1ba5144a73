"""``ProbeWorld``: the procedural clips as a ``torch.utils.data.Dataset`` of Clip-contract dicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from diffprobe.config import ConfigError
from diffprobe.data.dataset import FIELDS, ClipDataset, ClipSequence
from diffprobe.data.world.camera import world_to_camera
from diffprobe.data.world.config import SPLITS, WORLD_VERSION, ProbeWorldConfig
from diffprobe.data.world.motions import MOTIONS
from diffprobe.data.world.render import render
from diffprobe.data.world.scene import Scene, sample_scene
from diffprobe.data.world.shapes import CATEGORIES
from diffprobe.data.world.tracks import project, sample_tracks, visibility
from diffprobe.spec import DatasetSpec

#: Most pixels (clips x frames x H x W) rendered in one vectorised call: the renderer's per-pixel intermediates
#: scale with it, so it bounds the memory of rendering a split.
PIXELS_PER_CALL = 1 << 19


class ProbeWorld(Dataset):
    """Clips of Probe World for one split; ``world[i]`` is a dict of numpy arrays (plus int ``label``, ``action``).

    ``(config, split, i)`` fixes the clip byte for byte: clip ``i`` of split ``s`` draws from
    ``SeedSequence(config.seed, spawn_key=(split id, i))``, so splits never share a stream.
    """

    def __init__(self, config: ProbeWorldConfig, split: str = "train") -> None:
        self.config = config
        self.split = split
        self._size = config.split_size(split)  # raises on an unknown split

    def __len__(self) -> int:
        return self._size

    def _check(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"ProbeWorld index must be an int, got {type(index).__name__}")
        if not 0 <= index < self._size:
            raise IndexError(f"index {index} out of range for the {self.split!r} split of {self._size} clips")
        return int(index)

    def rngs(self, index: int) -> tuple[np.random.Generator, np.random.Generator]:
        """The (scene, tracks) random generators of clip ``index``."""
        seq = np.random.SeedSequence(self.config.seed, spawn_key=(SPLITS[self.split], self._check(index)))
        scene_seq, track_seq = seq.spawn(2)
        return np.random.Generator(np.random.PCG64(scene_seq)), np.random.Generator(np.random.PCG64(track_seq))

    def scene(self, index: int) -> Scene:
        """The scene description of clip ``index`` (camera path, objects, motions, textures)."""
        return sample_scene(self.config, self.rngs(index)[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.batch([index])[0]

    def clip(self, index: int, extras: bool = False) -> dict[str, Any]:
        """Clip ``index``; with ``extras`` also the ground truth behind it (see :meth:`batch`)."""
        return self.batch([index], extras=extras)[0]

    def batch(self, indices: Sequence[int], extras: bool = False) -> list[dict[str, Any]]:
        """Clips ``indices``, rendered together (much faster than one by one; the bytes are the same).

        With ``extras`` each dict also holds ``surface`` int8 (T, H, W) (0 wall, 1 floor, 2 + k object k),
        ``track_surface`` int16 (N,), ``track_depth`` float32 (N, T) (camera z of each track point),
        ``track_world`` float32 (N, T, 3), ``categories`` / ``motions`` int64 (K,) and ``camera_path`` (str).
        """
        cfg = self.config
        per_clip = cfg.frames * cfg.height * cfg.width
        step = max(1, PIXELS_PER_CALL // per_clip)
        out: list[dict[str, Any]] = []
        for start in range(0, len(indices), step):
            chunk = [self._check(i) for i in indices[start:start + step]]
            pairs = [self.rngs(i) for i in chunk]
            scenes = [sample_scene(cfg, rs) for rs, _ in pairs]
            images = render(scenes, cfg.height, cfg.width, cfg.focal)
            for j, (sc, (_, rt)) in enumerate(zip(scenes, pairs, strict=True)):
                out.append(self._assemble(sc, rt, {key: val[j] for key, val in images.items()}, extras))
        return out

    def _assemble(self, sc: Scene, rng: np.random.Generator, img: dict[str, np.ndarray],
                  extras: bool) -> dict[str, Any]:
        cfg = self.config
        k = sc.num_objects
        points, surf = sample_tracks(sc, cfg.num_tracks, cfg.object_track_fraction, cfg.height / cfg.width,
                                     cfg.focal, rng)
        xy, z = project(sc, points, cfg.height, cfg.width, cfg.focal)  # (N, T, 2), (N, T)
        visible = visibility(xy, z, surf, img["surface"], img["depth"])
        fpx = cfg.focal * cfg.width
        clip: dict[str, Any] = {
            "video": img["video"],
            "depth": img["depth"].astype(np.float32),
            "camera": world_to_camera(sc.cam_rot, sc.cam_pos).astype(np.float32),
            "intrinsics": np.array([[fpx, 0, cfg.width / 2], [0, fpx, cfg.height / 2], [0, 0, 1]], dtype=np.float32),
            "tracks": xy.astype(np.float32),
            "visible": visible,
            "boxes": np.ascontiguousarray(img["boxes"][:k]),
            "box_visible": np.ascontiguousarray(img["box_visible"][:k]),
            "label": int(sc.category[0]),
            "action": int(sc.motion[0]),
        }
        if extras:
            clip.update(surface=img["surface"], track_surface=surf, track_depth=z.astype(np.float32),
                        track_world=points.astype(np.float32), categories=sc.category.astype(np.int64),
                        motions=sc.motion.astype(np.int64), camera_path=sc.camera_path)
        return clip


class WorldClips(ClipSequence):
    """One split of Probe World as a :class:`~diffprobe.data.dataset.ClipSequence` (batches render together)."""

    def __init__(self, world: ProbeWorld, dataset: str, part: str) -> None:
        self.world = world
        self.dataset, self.part = dataset, part

    def __len__(self) -> int:
        return len(self.world)

    def read(self, index: int) -> dict[str, Any]:
        return self.world.batch([index])[0]

    def batch(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return self.world.batch([self._check(i) for i in indices])

    def labels(self, field: str) -> np.ndarray:
        """Category (``label``) or motion class (``action``) of every clip's main object, from the scenes alone."""
        which = {"label": "category", "action": "motion"}[field]
        return np.array([getattr(self.world.scene(i), which)[0] for i in range(len(self.world))], dtype=np.int64)


class ProbeWorldDataset(ClipDataset):
    """Probe World behind the dataset interface: spec ``probeworld:PRESET[@FIELD=VALUE,...]`` (any
    :class:`ProbeWorldConfig` field), splits train / val / test, every Clip field, exact labels."""

    kind = "probeworld"

    def __init__(self, config: ProbeWorldConfig, spec: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.spec = spec or probeworld_spec(config)
        self.identity = world_identity(config)
        self.splits = tuple(SPLITS)
        self.fields = frozenset(FIELDS)
        self.label_spaces = {"label": tuple(CATEGORIES), "action": tuple(MOTIONS)}
        self.frames, self.height, self.width = config.frames, config.height, config.width
        self.max_objects = config.max_objects
        self.max_tracks = config.num_tracks

    def split(self, name: str) -> ClipSequence:
        return WorldClips(ProbeWorld(self.config, name), self.identity, name)


def world_identity(config: ProbeWorldConfig) -> str:
    """Cache name of a Probe World config: generator version, readable size and the config hash."""
    return f"probeworld-v{WORLD_VERSION}-{config.height}x{config.width}x{config.frames}-{config.hash()}"


def probeworld_spec(config: ProbeWorldConfig, preset: str = "tiny") -> str:
    """A spec that opens ``config``: the preset plus every field that differs from it."""
    base = ProbeWorldConfig.preset(preset).to_dict()
    diff = {k: v for k, v in config.to_dict().items() if base[k] != v}
    if any(isinstance(v, list) for v in diff.values()):
        raise ConfigError(f"Probe World fields {sorted(k for k, v in diff.items() if isinstance(v, list))} cannot be "
                          "given in a spec; set them in a config file")
    return str(DatasetSpec("probeworld", preset, tuple(sorted(diff.items()))))


def open_probeworld(spec: DatasetSpec) -> ProbeWorldDataset:
    """The registry's factory: the spec's path is a preset name, its options override the preset's fields."""
    config = ProbeWorldConfig.preset(spec.path)
    where = f"dataset spec {str(spec)!r}"
    return ProbeWorldDataset(ProbeWorldConfig.from_dict({**config.to_dict(), **spec.option_dict()}, where=where),
                             str(spec))
