"""Data: every dataset behind one interface (``open_dataset(spec)``): Probe World, the embedded procedural video
world, and readers of real datasets on disk; the Clip contract; which clips play a task's train / val / test roles."""

from diffprobe.data.collate import collate_clips
from diffprobe.data.dataset import ClipDataset, ClipSequence, DatasetError
from diffprobe.data.registry import DATASETS, open_dataset, opened_datasets
from diffprobe.data.splits import ROLES, resolve_roles
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

__all__ = ["CAMERA_PATHS", "CATEGORIES", "DATASETS", "MOTIONS", "MOTION_REVERSE", "ROLES", "SPLITS", "ClipDataset",
           "ClipSequence", "DatasetError", "ProbeWorld", "ProbeWorldConfig", "collate_clips", "open_dataset",
           "opened_datasets", "reverse_clip", "resolve_roles"]
