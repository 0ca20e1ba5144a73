"""The tokenizer latents of a split, encoded once into the cache: the training data of the WALT twins."""

from __future__ import annotations

import torch
from einops import rearrange
from torch.utils.data import Dataset

from diffprobe.backbones.walt import LatentBackbone
from diffprobe.data.dataset import ClipSequence
from diffprobe.features.cache import FeatureCache
from diffprobe.features.sources import ensure_features
from diffprobe.models import CausalAutoencoder
from diffprobe.models.exports import latents_identity
from diffprobe.utils.distributed import DistContext


class TrainingLatents(Dataset):
    """Latents as the ``mode`` twin trains on them, read clip by clip from the cache: video mode ``(C, T', H', W')``
    per clip; image mode ``(C, 1, H', W')`` per frame (``len`` = clips x latent frames)."""

    def __init__(self, rows: Dataset, frames: int, mode: str) -> None:
        self.rows, self.frames, self.mode = rows, frames, mode

    def __len__(self) -> int:
        return len(self.rows) * (self.frames if self.mode == "image" else 1)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.mode == "image":
            clip, frame = divmod(int(i), self.frames)
            z = self.rows[clip][frame:frame + 1].float()  # (1, H', W', C)
        else:
            z = self.rows[int(i)].float()  # (T', H', W', C)
        return rearrange(z, "t h w c -> c t h w")


def ensure_latents(clips: ClipSequence, tokenizer: CausalAutoencoder, tokenizer_sha: str, mode: str,
                   cache: FeatureCache, device: torch.device, progress: bool = True,
                   workers: int = 0, ctx: DistContext | None = None) -> TrainingLatents:
    """The latents of ``clips`` as the ``mode`` twin sees them (encoded once into the cache, in float32); with a
    distributed ``ctx``, every rank encodes its share of the shards."""
    backbone = LatentBackbone(tokenizer, latents_identity(tokenizer_sha, mode), device, mode=mode)
    fs = ensure_features(backbone, clips, "clip", [0], 0.0, 0, cache, dtype=torch.float32, progress=progress,
                         workers=workers, ctx=ctx)[0]
    return TrainingLatents(fs.rows(), fs.feature_shape[0], mode)
