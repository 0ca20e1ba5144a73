"""The pixels positive control: a clip's own RGB, cut into space-time patches, as the only block.

It learns nothing and loses nothing, so a probe on it shows what the readout can read from the clip itself at the
study's budget: a task the pixels control cannot beat the prior on is a world or readout problem, not a finding
about any model (docs/uncertainty.md keeps that ladder, pixels -> latents -> untrained -> trained, per task).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from einops import rearrange

from diffprobe.backbones.base import Backbone
from diffprobe.config import Config
from diffprobe.errors import InputError
from diffprobe.models import frames_to_input


@dataclasses.dataclass(frozen=True)
class PixelOptions(Config):
    """Options of ``pixels``."""

    patch: int = 4  #: pixels per token side
    tubelet: int = 1  #: frames per token


class PixelBackbone(Backbone):
    """Patchified RGB in [-1, 1]: ``patch x patch`` pixels of ``tubelet`` frames per token, channels ordered
    ``(frame, row, column, rgb)``, so a token is ``tubelet * patch**2 * 3`` numbers and block 0 is the only block.

    A clip whose frame count is not a multiple of ``tubelet`` has its first frame repeated in front (as a causal
    video tokenizer encodes frame 0 alone), so 9 frames at tubelet 2 make 5 token frames; a frame size that is not a
    multiple of ``patch`` is an :class:`~diffprobe.errors.InputError`. The noise level is ignored: pixels are read
    clean, like the latents control.
    """

    num_blocks = 0

    def __init__(self, patch: int, tubelet: int, device: torch.device) -> None:
        if patch < 1 or tubelet < 1:
            raise InputError(f"pixels backbone: patch and tubelet must be >= 1, got patch={patch}, tubelet={tubelet}")
        self.patch, self.tubelet, self.device = patch, tubelet, device
        self.identity = f"pixels-p{patch}-u{tubelet}"

    @torch.no_grad()
    def features(self, video: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                 noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        _, frames, height, width, _ = video.shape
        if height % self.patch or width % self.patch:
            raise InputError(f"pixels backbone: {height}x{width} px frames do not split into {self.patch}x{self.patch} "
                             f"px patches; choose a patch that divides both (pixels@patch=P)")
        x = frames_to_input(video.to(self.device))  # (B, 3, T, H, W) in [-1, 1]
        pad = -frames % self.tubelet
        if pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, pad, -1, -1), x], dim=2)  # (B, 3, T + pad, H, W)
        tokens = rearrange(x, "b c (t u) (h p) (w q) -> b t h w (u p q c)", u=self.tubelet, p=self.patch,
                           q=self.patch)  # (B, T_f, H/p, W/p, u * p * p * 3)
        return dict.fromkeys(blocks, tokens)
