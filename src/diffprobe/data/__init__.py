"""Data: Probe World (the embedded procedural video world), the Clip contract, clip shards on disk."""

from diffprobe.data.collate import collate_clips
from diffprobe.data.world import (
    CAMERA_PATHS,
    CATEGORIES,
    MOTION_REVERSE,
    MOTIONS,
    SPLITS,
    ProbeWorld,
    ProbeWorldConfig,
    reverse_clip,
)

__all__ = ["CAMERA_PATHS", "CATEGORIES", "MOTIONS", "MOTION_REVERSE", "SPLITS", "ProbeWorld", "ProbeWorldConfig",
           "collate_clips", "reverse_clip"]
