"""The config of Probe World: image size, clip length, tracks, objects, camera paths and split sizes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from diffprobe.config import Config, ConfigError

#: Version of Probe World's generator, part of every cache key: bump it whenever the same config renders different
#: bytes. 2: wall and floor colours 0.3-0.55 apart in value (they were at most 0.25 apart, and camera motion was too
#: faint for a probe, or a pixel CNN, to learn camera pose).
WORLD_VERSION = 2

#: Camera paths Probe World knows (see :mod:`diffprobe.data.world.camera`).
CAMERA_PATHS: tuple[str, ...] = ("still", "pan", "tilt", "dolly", "orbit")


@dataclass(frozen=True)
class ProbeWorldConfig(Config):
    """Everything that decides the clips of Probe World; ``(config, split, index)`` fixes a clip byte for byte."""

    height: int = 32  # pixels
    width: int = 32  # pixels
    frames: int = 9  # T; 1 + 8 suits a causal tokenizer that encodes frame 0 alone
    num_tracks: int = 64  # N point tracks per clip (object points first, then background points)
    object_track_fraction: float = 0.5  # share of the N tracks placed on objects
    min_objects: int = 1  # K objects per clip is uniform in [min_objects, max_objects]; object 0 is the main one
    max_objects: int = 4
    focal: float = 1.0  # focal length in units of the image width (1.0 -> 53 degrees horizontal field of view)
    camera_paths: tuple[str, ...] = CAMERA_PATHS  # drawn uniformly per clip
    camera_motion: float = 1.0  # scales every camera path's amplitude (0 keeps the camera still)
    colour_jitter: float = 0.1  # amplitude of the per-clip brightness / per-channel gain jitter
    seed: int = 0  # base seed; splits draw from disjoint streams spawned from it
    train_size: int = 4096
    val_size: int = 512
    test_size: int = 512

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {},
        "small": {"height": 64, "width": 64, "frames": 17, "num_tracks": 128, "train_size": 8192,
                  "val_size": 1024, "test_size": 1024},
    }

    def validate(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ConfigError(f"ProbeWorldConfig.height/width: need at least 8 pixels, got {self.height}x{self.width}")
        if self.frames < 2:
            raise ConfigError(f"ProbeWorldConfig.frames: need at least 2 frames to show motion, got {self.frames}")
        if self.num_tracks < 1:
            raise ConfigError(f"ProbeWorldConfig.num_tracks: need at least 1, got {self.num_tracks}")
        if not 0.0 <= self.object_track_fraction <= 1.0:
            raise ConfigError(f"ProbeWorldConfig.object_track_fraction: {self.object_track_fraction} is not in [0, 1]")
        if not 1 <= self.min_objects <= self.max_objects <= 8:
            raise ConfigError(f"ProbeWorldConfig.min_objects/max_objects: need 1 <= min <= max <= 8, got "
                              f"{self.min_objects}, {self.max_objects}")
        if not 0.3 <= self.focal <= 4.0:
            raise ConfigError(f"ProbeWorldConfig.focal: {self.focal} is not in [0.3, 4.0] (units of image width)")
        unknown = [p for p in self.camera_paths if p not in CAMERA_PATHS]
        if unknown or not self.camera_paths:
            raise ConfigError(f"ProbeWorldConfig.camera_paths: {list(self.camera_paths)} must be a non-empty subset "
                              f"of {list(CAMERA_PATHS)}")
        if not 0.0 <= self.camera_motion <= 2.0:
            raise ConfigError(f"ProbeWorldConfig.camera_motion: {self.camera_motion} is not in [0, 2]")
        if not 0.0 <= self.colour_jitter <= 0.5:
            raise ConfigError(f"ProbeWorldConfig.colour_jitter: {self.colour_jitter} is not in [0, 0.5]")
        if self.seed < 0:
            raise ConfigError(f"ProbeWorldConfig.seed: must be >= 0, got {self.seed}")
        for name in ("train_size", "val_size", "test_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ProbeWorldConfig.{name}: must be >= 0, got {getattr(self, name)}")

    def split_size(self, split: str) -> int:
        """Number of clips in ``split`` (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; known splits are {list(SPLITS)}")
        return int(getattr(self, f"{split}_size"))


#: split name -> id used in the seed stream (disjoint streams per split).
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
