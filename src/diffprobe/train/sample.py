"""Generating clips (video twin) or images (image twin) from a trained WALT with the DDIM sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffprobe.diffusion import ddim_sample
from diffprobe.models import WALT, CausalAutoencoder, output_to_frames
from diffprobe.utils.io import atomic_write_json
from diffprobe.utils.media import frame_grid, write_png, write_video


@torch.no_grad()
def generate(denoiser: WALT, tokenizer: CausalAutoencoder, mode: str, clip_shape: tuple[int, int, int], num: int,
             steps: int, seed: int, device: torch.device, batch_size: int = 16,
             progress: bool = True) -> np.ndarray:
    """``num`` samples of clips of ``clip_shape`` (frames, height, width) as uint8 ``(num, T, H, W, 3)`` (T = 1 in
    image mode); batch ``k`` draws from a generator seeded with ``(seed, k)``, so the same seed gives the same
    samples."""
    c, frames, h, w = tokenizer.latent_shape(*clip_shape)
    frames = 1 if mode == "image" else frames
    denoiser, tokenizer = denoiser.to(device).eval(), tokenizer.to(device).eval()
    out = []
    for k, lo in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - lo)
        g = torch.Generator(device=device).manual_seed(seed * 10_007 + k)
        z = ddim_sample(denoiser, (n, c, frames, h, w), steps, g, progress=progress)  # (n, C, T', H', W')
        out.append(output_to_frames(tokenizer.decode(z).clamp(-1, 1)).cpu().numpy())  # (n, T, H, W, 3)
    return np.concatenate(out)


def write_samples(samples: np.ndarray, out_dir: str | Path, fmt: str = "gif", info: dict | None = None) -> Path:
    """Write each sample as a GIF/MP4 (images as PNG) and all of them as one PNG grid; returns the grid's path."""
    out_dir = Path(out_dir)
    for i, s in enumerate(samples):
        if s.shape[0] == 1:
            write_png(s[0], out_dir / f"sample-{i:03d}.png", scale=4)
        else:
            write_video(s, out_dir / f"sample-{i:03d}.{fmt}")
    per_row = 8 if samples.shape[1] == 1 else 1  # images: 8 a row; clips: one clip a row, frames across
    n = samples.shape[0] // per_row * per_row
    rows = samples[:n].reshape(n // per_row, per_row * samples.shape[1], *samples.shape[2:]) if n else samples
    grid = out_dir / "samples.png"
    write_png(frame_grid(rows), grid, scale=3)
    if info is not None:
        atomic_write_json(out_dir / "samples.json", info)
    return grid
