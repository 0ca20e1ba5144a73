"""How the transformers vision kinds (:mod:`diffprobe.backbones.vision`) turn uint8 clips into pixel values: the
folder's preprocessor config read into :class:`Pixels` (rescale, mean / std, resample filter; the kind's defaults
without one), the frame size an image model sees (:func:`patch_multiple`), a clip resampled in time
(:func:`resample_indices`), and the ``prepare`` functions of image models (every frame alone) and video models (the
clip as tubelets at a square size).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffprobe.backbones.external import BackboneLoadError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: PIL resample codes of the processors' configs -> torch interpolation modes
RESAMPLE = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}
PREPROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json")


@dataclasses.dataclass(frozen=True)
class Pixels:
    """How uint8 frames become the model's pixel values (from the folder's preprocessor config)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float  #: rescale factor (1 when the config says do_rescale: false)
    normalize: bool
    resample: str  #: torch interpolation mode
    source: str  #: the config file read, or "defaults"

    def describe(self) -> str:
        return (f"rescale={self.scale!r} mean={self.mean!r} std={self.std!r} normalize={self.normalize} "
                f"resample={self.resample} from={self.source}")

    def __call__(self, frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` -> float32 ``(N, 3, h, w)`` at ``size`` = (h, w)."""
        x = frames.permute(0, 3, 1, 2).float()  # (N, 3, H, W) in 0..255
        if tuple(x.shape[-2:]) != tuple(size):
            if self.resample == "nearest-exact":
                x = F.interpolate(x, size=size, mode="nearest-exact")
            else:
                x = F.interpolate(x, size=size, mode=self.resample, antialias=True, align_corners=False)
            x = x.round().clamp(0, 255)  # the processors resize uint8 images
        x = x * self.scale
        if self.normalize:
            mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x  # (N, 3, h, w)


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    raise BackboneLoadError(f"{where}: expected a number or 3 numbers, got {value!r}")


def read_pixels(folder: Path, default_mean: tuple[float, float, float], default_std: tuple[float, float, float],
                default_resample: int) -> Pixels:
    """The pixel normalisation of ``folder``'s preprocessor config; the kind's defaults (with a warning) without
    one."""
    path = next((folder / n for n in PREPROCESSOR_FILES if (folder / n).is_file()), None)
    if path is None:
        warnings.warn(f"{folder}: no {' or '.join(PREPROCESSOR_FILES)}; using rescale 1/255, mean {default_mean}, "
                      f"std {default_std}", stacklevel=3)
        return Pixels(default_mean, default_std, 1 / 255, True, RESAMPLE[default_resample], "defaults")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BackboneLoadError(f"{path}: cannot read the preprocessor config: {e}") from e
    if not isinstance(cfg, dict):
        raise BackboneLoadError(f"{path}: expected a JSON object")
    mean = _triple(cfg["image_mean"], f"{path}: image_mean") if "image_mean" in cfg else default_mean
    std = _triple(cfg["image_std"], f"{path}: image_std") if "image_std" in cfg else default_std
    if any(s <= 0 for s in std):
        raise BackboneLoadError(f"{path}: image_std must be positive, got {std}")
    scale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
    code = cfg.get("resample", default_resample)
    if code not in RESAMPLE:
        raise BackboneLoadError(f"{path}: resample={code!r} is not supported (0 nearest, 2 bilinear, 3 bicubic)")
    return Pixels(mean, std, scale, bool(cfg.get("do_normalize", True)), RESAMPLE[code], path.name)


def resample_indices(frames: int, target: int) -> list[int]:
    """``target`` evenly spaced frame indices from the first frame to the last of a ``frames``-frame clip."""
    if target == 1:
        return [0]
    return [int((frames - 1) * i / (target - 1) + 0.5) for i in range(target)]


def patch_multiple(height: int, width: int, patch: int, size: int = 0) -> tuple[int, int]:
    """The frame size an image model sees: short side scaled to ``size`` (0: unscaled), then each side rounded to
    the nearest multiple of ``patch`` (at least one patch)."""
    h, w = float(height), float(width)
    if size:
        scale = size / min(h, w)
        h, w = h * scale, w * scale
    return max(patch, int(h / patch + 0.5) * patch), max(patch, int(w / patch + 0.5) * patch)



def image_prepare(pixels: Pixels, patch: int, size: int) -> Callable:
    def prepare(video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        b, t, h, w, _ = video.shape  # (B, T, H, W, 3)
        hh, ww = patch_multiple(h, w, patch, size)
        x = pixels(video.reshape(b * t, h, w, 3), (hh, ww))  # (B*T, 3, hh, ww): every frame its own image
        return x, (b, t, hh // patch, ww // patch)
    return prepare


def video_prepare(pixels: Pixels, patch: int, tubelet: int, side: int, frames: Callable[[int], int]) -> Callable:
    def prepare(video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        b, t, h, w, _ = video.shape  # (B, T, H, W, 3)
        n = frames(t)
        clip = video[:, resample_indices(t, n)]  # (B, n, H, W, 3)
        x = pixels(clip.reshape(b * n, h, w, 3), (side, side)).reshape(b, n, 3, side, side)  # (B, n, 3, S, S)
        return x, (b, n // tubelet, side // patch, side // patch)
    return prepare
