"""Non-diffusion baselines from transformers: DINOv2, SigLIP (image models), VideoMAE, V-JEPA 2 (video models).

Specs: ``dinov2:PATH[@OPTS]``, ``siglip:PATH[@OPTS]``, ``videomae:PATH[@OPTS]``, ``vjepa2:PATH[@OPTS]``; PATH is a
folder in transformers' ``save_pretrained`` layout::

    PATH/
      config.json                      # model_type picks the class (see below)
      model.safetensors                # or pytorch_model.bin, or a sharded *.index.json + shards
      preprocessor_config.json         # image_mean / image_std / rescale_factor / resample (optional; V-JEPA 2
                                       #   folders may hold video_preprocessor_config.json instead)

| kind | config ``model_type`` | class | mode |
| ``dinov2`` | ``dinov2`` / ``dinov2_with_registers`` | ``Dinov2Model`` / ``Dinov2WithRegistersModel`` | image |
| ``siglip`` | ``siglip_vision_model`` / ``siglip`` (full SigLIP: vision tower only) | ``SiglipVisionModel`` | image |
| ``videomae`` | ``videomae`` | ``VideoMAEModel`` | video |
| ``vjepa2`` | ``vjepa2`` | ``VJEPA2Model`` (encoder only; the predictor never runs) | video |

Blocks: 0 = the embeddings' output (patch embedding + position embedding where the model adds one), k = 1..N =
the output of encoder layer k: block k equals ``hidden_states[k]`` of the model called with
``output_hidden_states=True`` (before any final layer norm). Forward hooks (:class:`BlockTaps`) on
``[embeddings, *layers]`` stop the forward after the deepest block asked for. Tokens: patch tokens only (DINOv2's
CLS and register tokens dropped; SigLIP, VideoMAE and V-JEPA 2 have none), ``(B, T_f, H_f, W_f, C)`` float32: image
models see every frame alone (``T_f = T``), video models see the clip as tubelets of ``tubelet_size`` frames
(``T_f = frames fed / tubelet_size``).

Pixels: uint8 RGB -> resized (only where needed, see each kind) with the folder's ``resample`` filter (torch's
antialiased bilinear / bicubic, rounded back to 0..255 as the library's processors resize uint8 images) -> times
``rescale_factor`` -> ``(x - image_mean) / image_std``. A folder without a preprocessor config gets 1/255 and the
kind's standard statistics (ImageNet's mean/std; SigLIP: 0.5 / 0.5), with a warning. The whole frame is resized
(never cropped), so the token grid covers the frame as the readouts assume.

- ``dinov2``, ``siglip``: frames whose sides are multiples of the patch size go in as they are; other sides are
  resized to the nearest multiple. ``size=N`` first scales the frame so its short side is N (aspect kept). Both
  models interpolate their position table to the frame's grid (DINOv2 by itself; SigLIP with
  ``interpolate_pos_encoding=True``, the identity at the table's own size).
- ``videomae``: its sinusoidal position table is fixed, so the clip is resampled to the config's ``num_frames``
  (evenly spaced frames from the first to the last) and every frame resized to ``image_size`` square.
- ``vjepa2``: its 3D RoPE assumes a ``crop_size`` square grid, so frames are resized to ``crop_size``; in time the
  clip is resampled to ``frames`` (default 0: the clip's length rounded up to a multiple of ``tubelet_size``).

No noise and no conditioning: ``t`` must be 0 and ``ensemble`` 1 (anything else is an ``InputError``, a
ValueError, naming the kind). No ``encoder``: features come from pixels. Options: ``dtype`` (fp32|bf16|fp16),
``batch_size`` (clips per forward; 0 = the whole batch), plus ``size`` (dinov2, siglip) and ``frames`` (vjepa2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffprobe.backbones.base import Backbone
from diffprobe.backbones.external import (
    BackboneLoadError,
    BlockTaps,
    ExternalOptions,
    identity_of,
    parse_options,
    require_at_least,
    require_files,
)
from diffprobe.backbones.registry import ResolvedBackbone
from diffprobe.backbones.vision_pixels import IMAGENET_MEAN, IMAGENET_STD, image_prepare, read_pixels, video_prepare
from diffprobe.config import ConfigError
from diffprobe.errors import InputError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


# ---- options ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageModelOptions(ExternalOptions):
    """dinov2 / siglip: ``size`` = short side the frames are scaled to first (0: as they come)."""

    size: int = 0

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 0, "size")


@dataclasses.dataclass(frozen=True)
class VideoMAEOptions(ExternalOptions):
    """videomae: frames and size are fixed by the model's position table."""


@dataclasses.dataclass(frozen=True)
class VJEPA2Options(ExternalOptions):
    """vjepa2: ``frames`` = frames the clip is resampled to (0: its length rounded up to a tubelet multiple)."""

    frames: int = 0

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 0, "frames")


# ---- the backbone -----------------------------------------------------------------------------------------------
class VisionBackbone(Backbone):
    """A transformers vision encoder read at its hidden states: pixels -> ``prepare`` -> one forward with hooks
    on ``[embeddings, *layers]`` -> patch tokens ``(B, T_f, H_f, W_f, C)``.

    ``prepare(video uint8 (b, T, H, W, 3))`` returns the model input and the token grid ``(b, T_f, H_f, W_f)``;
    ``call(inputs)`` runs the library's model; ``skip`` leading tokens (CLS, registers) are dropped.
    """

    def __init__(self, kind: str, identity: str, model: nn.Module, embeddings: nn.Module, layers: Sequence[nn.Module],
                 prepare: Callable[[torch.Tensor], tuple[torch.Tensor, tuple[int, int, int, int]]],
                 call: Callable[[torch.Tensor], Any], skip: int, device: torch.device, dtype: torch.dtype,
                 batch_size: int = 0) -> None:
        self.kind, self.identity, self.model, self.device = kind, identity, model, device
        self.prepare, self.call, self.skip = prepare, call, skip
        self.dtype, self.batch_size = dtype, batch_size
        self.taps = BlockTaps([embeddings, *layers])  # block b = module b (embeddings = block 0)
        self.num_blocks = len(layers)

    @torch.no_grad()
    def features(self, video: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                 noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        if t != 0:
            raise InputError(f"{self.kind} ({self.identity}) has no noise: t must be 0, got t={t}")
        if ensemble != 1:
            raise InputError(f"{self.kind} ({self.identity}) has no noise to average over: ensemble must be 1, "
                             f"got {ensemble}")
        blocks = list(blocks)
        bad = [b for b in blocks if not 0 <= b <= self.num_blocks]
        if bad:
            raise InputError(f"{self.kind}: block(s) {bad} out of range: this model has blocks 0..{self.num_blocks}")
        if not blocks:
            return {}
        step = self.batch_size or len(video)
        parts = [self._features(video[i:i + step], blocks) for i in range(0, len(video), step)]
        return {b: torch.cat([p[b] for p in parts]) for b in blocks}

    def _features(self, video: torch.Tensor, blocks: list[int]) -> dict[int, torch.Tensor]:
        inputs, grid = self.prepare(video.to(self.device))
        inputs = inputs.to(self.dtype)
        with self.taps.capture([b + 1 for b in blocks]) as out:
            self.taps.run(lambda: self.call(inputs))
        return {b: self.tokens(out[b + 1], grid) for b in blocks}

    def tokens(self, hidden: torch.Tensor, grid: tuple[int, int, int, int]) -> torch.Tensor:
        """Hidden states ``(n, skip + L, C)`` -> patch tokens ``(B, T_f, H_f, W_f, C)`` float32."""
        b, t_f, h_f, w_f = grid
        patches = hidden[:, self.skip:]  # (n, L, C)
        if patches.shape[0] * patches.shape[1] != b * t_f * h_f * w_f:
            raise RuntimeError(f"{self.kind}: {tuple(hidden.shape)} hidden states do not fit a {grid} token grid "
                               f"after dropping {self.skip} leading token(s)")
        return patches.reshape(b, t_f, h_f, w_f, patches.shape[-1]).float()


# ---- loading ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars (its findings are turned into errors here)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def read_config(folder: Path, kind: str, known: dict[str, str]) -> dict[str, Any]:
    """``folder/config.json`` as a dict, checked to hold one of the ``known`` model types."""
    require_files(folder, "config.json")
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BackboneLoadError(f"{path}: cannot read the model config: {e}") from e
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if model_type not in known:
        raise BackboneLoadError(f"{path}: model_type {model_type!r} is not a {kind} model (the {kind} kind loads "
                                f"model_type {sorted(known)})")
    if not any((folder / n).is_file() for n in WEIGHT_FILES):
        raise BackboneLoadError(f"{folder / WEIGHT_FILES[0]}: missing (a {kind} folder in transformers' "
                                f"save_pretrained layout has one of {list(WEIGHT_FILES)})")
    return cfg


def load_model(cls: Any, folder: Path, dtype: torch.dtype,
               blocks: Callable[[nn.Module], tuple[nn.Module, Sequence[nn.Module]]]) -> nn.Module:
    """``cls.from_pretrained(folder)`` in eval mode. Weights whose shape does not fit the config, and missing
    weights of the modules the features use (the embeddings and layers ``blocks(model)``), are errors naming the
    weights file; missing weights of unused modules (final norm, heads, a predictor) are a warning; weights the
    class does not have (a text tower, a decoder, a classifier) are ignored."""
    weights = next(folder / n for n in WEIGHT_FILES if (folder / n).is_file())
    try:
        with _quiet_transformers():
            model, info = cls.from_pretrained(folder, dtype=dtype, output_loading_info=True,
                                              ignore_mismatched_sizes=True)
    except Exception as e:  # OSError, SafetensorError, RuntimeError, ...: re-raised naming the file
        raise BackboneLoadError(f"{weights}: cannot load {cls.__name__} from {folder}: {e}") from e
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        shown = ", ".join(f"{k} {tuple(a)} vs config {tuple(b)}" for k, a, b in mismatched[:3])
        raise BackboneLoadError(f"{weights}: {len(mismatched)} weight(s) do not fit {folder / 'config.json'} "
                                f"({shown}{', ...' if len(mismatched) > 3 else ''})")
    embeddings, layers = blocks(model)
    prefixes = _prefixes(model, [embeddings, *layers])
    missing = sorted(info.get("missing_keys") or [])
    needed = [k for k in missing if k.startswith(prefixes)]
    if needed:
        raise BackboneLoadError(f"{weights}: {len(needed)} weight(s) of the {cls.__name__} that "
                                f"{folder / 'config.json'} describes are missing ({', '.join(needed[:3])}"
                                f"{', ...' if len(needed) > 3 else ''})")
    if missing:
        warnings.warn(f"{weights}: {len(missing)} weight(s) of modules the features do not use are missing and "
                      f"left at their initial values ({', '.join(missing[:3])})", stacklevel=3)
    return model.eval()


def _prefixes(model: nn.Module, modules: Sequence[nn.Module]) -> tuple[str, ...]:
    names = {id(m): n for n, m in model.named_modules()}
    return tuple(names[id(m)] + "." for m in modules)


def load_dinov2(path: Path, options: dict[str, str], spec: str, device: torch.device) -> ResolvedBackbone:
    """``dinov2:PATH[@dtype=..,batch_size=..,size=N]``: Dinov2Model or Dinov2WithRegistersModel by model_type."""
    import transformers

    opts = parse_options(ImageModelOptions, options, spec)
    classes = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel"}
    cfg = read_config(path, "dinov2", classes)
    cls = getattr(transformers, classes[cfg["model_type"]])
    pixels = read_pixels(path, IMAGENET_MEAN, IMAGENET_STD, 3)
    model = load_model(cls, path, opts.torch_dtype, lambda m: (m.embeddings, m.encoder.layer))
    c = model.config
    skip = 1 + (c.num_register_tokens if cfg["model_type"] == "dinov2_with_registers" else 0)
    identity = identity_of("dinov2", path, opts, model=cls.__name__, pixels=pixels.describe(),
                           geometry=f"frames alone, sides to multiples of patch {c.patch_size}, size={opts.size}, "
                                    "position table interpolated", tokens=f"patches (dropped {skip} leading)")
    backbone = VisionBackbone("dinov2", identity, model.to(device), model.embeddings, model.encoder.layer,
                              image_prepare(pixels, c.patch_size, opts.size), lambda x: model(pixel_values=x),
                              skip, device, opts.torch_dtype, opts.batch_size)
    return ResolvedBackbone(backbone, "image", 0, None)


def load_siglip(path: Path, options: dict[str, str], spec: str, device: torch.device) -> ResolvedBackbone:
    """``siglip:PATH[@dtype=..,batch_size=..,size=N]``: SiglipVisionModel (a full SiglipModel folder: its vision
    tower, the text tower is never loaded)."""
    from transformers import SiglipVisionModel

    opts = parse_options(ImageModelOptions, options, spec)
    cfg = read_config(path, "siglip", {"siglip_vision_model": "SiglipVisionModel", "siglip": "SiglipModel"})
    pixels = read_pixels(path, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 3)
    model = load_model(SiglipVisionModel, path, opts.torch_dtype, lambda m: (m.embeddings, m.encoder.layers))
    c = model.config
    identity = identity_of("siglip", path, opts, model=f"SiglipVisionModel of {cfg['model_type']}",
                           pixels=pixels.describe(),
                           geometry=f"frames alone, sides to multiples of patch {c.patch_size}, size={opts.size}, "
                                    "interpolate_pos_encoding=True", tokens="patches")
    backbone = VisionBackbone("siglip", identity, model.to(device), model.embeddings, model.encoder.layers,
                              image_prepare(pixels, c.patch_size, opts.size),
                              lambda x: model(pixel_values=x, interpolate_pos_encoding=True),
                              0, device, opts.torch_dtype, opts.batch_size)
    return ResolvedBackbone(backbone, "image", 0, None)


def load_videomae(path: Path, options: dict[str, str], spec: str, device: torch.device) -> ResolvedBackbone:
    """``videomae:PATH[@dtype=..,batch_size=..]``: VideoMAEModel at its config's num_frames x image_size."""
    from transformers import VideoMAEModel

    opts = parse_options(VideoMAEOptions, options, spec)
    read_config(path, "videomae", {"videomae": "VideoMAEModel"})
    pixels = read_pixels(path, IMAGENET_MEAN, IMAGENET_STD, 2)
    model = load_model(VideoMAEModel, path, opts.torch_dtype, lambda m: (m.embeddings, m.encoder.layer))
    c = model.config
    side, patch, tubelet, n = _square(c.image_size, path), c.patch_size, c.tubelet_size, c.num_frames
    identity = identity_of("videomae", path, opts, model="VideoMAEModel", pixels=pixels.describe(),
                           geometry=f"clip resampled to {n} frames, frames resized to {side}x{side}",
                           tokens=f"tubelets {tubelet}x{patch}x{patch}")
    backbone = VisionBackbone("videomae", identity, model.to(device), model.embeddings, model.encoder.layer,
                              video_prepare(pixels, patch, tubelet, side, lambda t: n),
                              lambda x: model(pixel_values=x), 0, device, opts.torch_dtype, opts.batch_size)
    return ResolvedBackbone(backbone, "video", 0, None)


def load_vjepa2(path: Path, options: dict[str, str], spec: str, device: torch.device) -> ResolvedBackbone:
    """``vjepa2:PATH[@dtype=..,batch_size=..,frames=N]``: VJEPA2Model's encoder at crop_size, ``frames`` frames."""
    from transformers import VJEPA2Model

    opts = parse_options(VJEPA2Options, options, spec)
    read_config(path, "vjepa2", {"vjepa2": "VJEPA2Model"})
    pixels = read_pixels(path, IMAGENET_MEAN, IMAGENET_STD, 2)
    model = load_model(VJEPA2Model, path, opts.torch_dtype, lambda m: (m.encoder.embeddings, m.encoder.layer))
    c = model.config
    side, patch, tubelet = _square(c.crop_size, path), c.patch_size, c.tubelet_size
    if opts.frames % tubelet:
        raise ConfigError(f"backbone spec {spec!r}: frames={opts.frames} is not a multiple of the model's "
                          f"tubelet_size {tubelet}")

    def frames(t: int) -> int:
        return opts.frames or -(-t // tubelet) * tubelet

    identity = identity_of("vjepa2", path, opts, model="VJEPA2Model encoder", pixels=pixels.describe(),
                           geometry=f"clip resampled to frames={opts.frames} (0: length rounded up to a multiple of "
                                    f"{tubelet}), frames resized to {side}x{side}",
                           tokens=f"tubelets {tubelet}x{patch}x{patch}")
    backbone = VisionBackbone("vjepa2", identity, model.to(device), model.encoder.embeddings, model.encoder.layer,
                              video_prepare(pixels, patch, tubelet, side, frames),
                              lambda x: model(pixel_values_videos=x, skip_predictor=True),
                              0, device, opts.torch_dtype, opts.batch_size)
    return ResolvedBackbone(backbone, "video", 0, None)


def _square(size: Any, folder: Path) -> int:
    """A config's image size as one side (square models)."""
    if isinstance(size, int):
        return size
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    raise BackboneLoadError(f"{folder / 'config.json'}: expected a square image size, got {size!r}")
