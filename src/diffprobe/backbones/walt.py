"""Our own models as backbones: a WALT twin (video mode or image mode) and the tokenizer-latents control."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange

from diffprobe.backbones.base import Backbone, clip_noise
from diffprobe.diffusion import add_noise
from diffprobe.models import WALT, CausalAutoencoder, frames_to_input


class WALTBackbone(Backbone):
    """Encode with the tokenizer, noise the latents to level t, run the denoiser once, return block token grids.

    ``mode="video"``: the clip is encoded and denoised as one video (features ``(B, T', H', W', D)`` over latent
    frames). ``mode="image"``: every frame is its own 1-frame image, encoded and denoised alone, so the features are
    ``(B, T, H', W', D)`` over all T frames. Class-conditional denoisers are run with the null class. The tokenizer
    is this backbone's ``encoder`` (a :class:`LatentBackbone` of the same mode).
    """

    def __init__(self, tokenizer: CausalAutoencoder, denoiser: WALT, mode: str, identity: str,
                 device: torch.device, encoder_identity: str) -> None:
        if mode not in ("video", "image"):
            raise ValueError(f"WALTBackbone: mode must be 'video' or 'image', got {mode!r}")
        self.encoder = LatentBackbone(tokenizer, encoder_identity, device, mode=mode)
        self.denoiser = denoiser.to(device).eval()
        self.mode = mode
        self.identity = identity
        self.num_blocks = denoiser.config.depth
        self.device = device

    @torch.no_grad()
    def features(self, video: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                 noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        z = self.encoder.features(video, clip_ids, [0], 0.0, noise_seed)[0]  # (B, T_f, H', W', C)
        return self.features_from_encoded(z, clip_ids, blocks, t, noise_seed, ensemble)

    @torch.no_grad()
    def features_from_encoded(self, encoded: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int],
                              t: float, noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        b, frames = encoded.shape[:2]
        if self.mode == "image":  # every frame its own sample, with its own noise stream (clip, frame)
            z = rearrange(encoded, "b t h w c -> (b t) c 1 h w")  # (B*T, C, 1, H', W')
            ids = (clip_ids[:, None] * frames + torch.arange(frames)[None]).reshape(-1)
        else:
            z = rearrange(encoded, "b t h w c -> b c t h w")  # (B, C, T', H', W')
            ids = clip_ids
        z = z.float()
        tt = torch.full((z.shape[0],), float(t), device=z.device)
        acc: dict[int, torch.Tensor] = {}
        for draw in range(ensemble):
            x_t = add_noise(z, tt, clip_noise(z, ids, noise_seed, draw)) if t > 0 else z
            for blk, f in self.denoiser(x_t, tt, blocks=list(blocks)).items():  # (B', T', h, w, D)
                acc[blk] = acc[blk] + f if blk in acc else f
        out = {blk: f / ensemble for blk, f in acc.items()}
        if self.mode == "image":
            out = {blk: rearrange(f, "(b t) 1 h w d -> b t h w d", b=b) for blk, f in out.items()}
        return out


class LatentBackbone(Backbone):
    """The tokenizer-latents control: the clean latents themselves, channels last, as the only 'block' (0).

    ``mode="image"`` encodes every frame alone (as the image twin sees it); ``mode="video"`` the whole clip.
    """

    num_blocks = 0

    def __init__(self, tokenizer: CausalAutoencoder, identity: str, device: torch.device,
                 mode: str = "video") -> None:
        if mode not in ("video", "image"):
            raise ValueError(f"LatentBackbone: mode must be 'video' or 'image', got {mode!r}")
        self.tokenizer = tokenizer.to(device).eval()
        self.identity = identity
        self.device = device
        self.mode = mode

    @torch.no_grad()
    def features(self, video: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                 noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        if list(blocks) != [0]:
            raise ValueError(f"LatentBackbone has only block 0 (the latents), asked for {list(blocks)}")
        if self.mode == "image":
            z = self.tokenizer.encode(frames_to_input(rearrange(video, "b t h w c -> (b t) 1 h w c")))
            return {0: rearrange(z, "(b t) c 1 h w -> b t h w c", b=video.shape[0])}  # (B, T, H', W', C)
        z = self.tokenizer.encode(frames_to_input(video))  # (B, C, T', H', W')
        return {0: rearrange(z, "b c t h w -> b t h w c")}
