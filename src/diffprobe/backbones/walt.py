"""Our own models as backbones: a WALT twin (video mode or image mode) and the tokenizer-latents control."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange

from diffprobe.backbones.base import Backbone, clip_noise
from diffprobe.diffusion import add_noise, ddim_from
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

    def _model_layout(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, T_f, H', W', C)`` -> the denoiser's ``(B', C, T', H', W')`` (image mode: one per frame)."""
        if self.mode == "image":
            return rearrange(z, "b t h w c -> (b t) c 1 h w")
        return rearrange(z, "b t h w c -> b c t h w")

    def _feature_layout(self, x: torch.Tensor, b: int) -> torch.Tensor:
        if self.mode == "image":
            return rearrange(x, "(b t) c 1 h w -> b t h w c", b=b)
        return rearrange(x, "b c t h w -> b t h w c")

    def noise(self, z: torch.Tensor, t: float, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, t)``: latents ``(B, T_f, H', W', C)`` noised to level t by the twins' own cosine schedule."""
        tt = torch.full((len(z),), float(t), device=z.device)
        return add_noise(z, tt, eps) if t > 0 else z, tt

    @torch.no_grad()
    def denoise(self, x_t: torch.Tensor, t: float, clean: torch.Tensor, steps: int) -> torch.Tensor:
        """DDIM from ``x_t`` ``(B, T_f, H', W', C)`` at level t to the clean-latent estimate, unconditionally."""
        z0 = ddim_from(self.denoiser, self._model_layout(x_t.float()), t, steps, progress=False)
        return self._feature_layout(z0, len(x_t))

    @torch.no_grad()
    def features_from_encoded(self, encoded: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int],
                              t: float, noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        b, frames = encoded.shape[:2]
        z = self._model_layout(encoded).float()  # (B, C, T', H', W'), image mode (B*T, C, 1, H', W')
        ids = clip_ids
        if self.mode == "image":  # every frame its own sample, with its own noise stream (clip, frame)
            ids = (clip_ids[:, None] * frames + torch.arange(frames)[None]).reshape(-1)
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
