"""Probe World: a procedural 2.5D video world with exact labels for every task of the Clip contract."""

from diffprobe.data.world.config import CAMERA_PATHS, SPLITS, WORLD_VERSION, ProbeWorldConfig
from diffprobe.data.world.dataset import ProbeWorld
from diffprobe.data.world.motions import MOTION_REVERSE, MOTIONS, reverse_clip
from diffprobe.data.world.shapes import CATEGORIES, CATEGORY_FAMILY, FAMILIES

__all__ = ["CAMERA_PATHS", "CATEGORIES", "CATEGORY_FAMILY", "FAMILIES", "MOTIONS", "MOTION_REVERSE", "SPLITS",
           "WORLD_VERSION", "ProbeWorld", "ProbeWorldConfig", "reverse_clip"]
