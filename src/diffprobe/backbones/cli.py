"""``diffprobe backbone info SPEC`` (blocks, token grids and channels for a clip size) and ``diffprobe backbone
check SPEC`` (noise a few clips to t, denoise them back with the model's own scheduler: is the latent scaling and
conditioning right?)."""

from __future__ import annotations

import click

from diffprobe.backbones.base import T_MAX
from diffprobe.errors import InputError
from diffprobe.utils.cliopts import dataset_option


@click.group("backbone")
def backbone_group() -> None:
    """Inspect a backbone given by spec (KIND:PATH[@KEY=VALUE,...], e.g. walt:runs/video or
    svd:/models/svd@dtype=bf16)."""


@backbone_group.command("info")
@click.argument("spec")
@click.option("--frames", type=click.IntRange(min=1), default=9, show_default=True,
              help="Clip length to report the grids for.")
@click.option("--size", type=click.IntRange(min=1), default=32, show_default=True, help="Frame side in pixels.")
@click.option("--device", default="auto", show_default=True)
def info_cmd(spec: str, frames: int, size: int, device: str) -> None:
    """Print the backbone's identity and, for a clip of FRAMES x SIZE x SIZE, every block's token grid (T_f, H_f,
    W_f) and channel count."""
    from diffprobe.backbones.registry import block_shapes, load_backbone
    from diffprobe.utils.runtime import resolve_device

    rb = load_backbone(spec, resolve_device(device))
    sees = "each frame alone" if rb.mode == "image" else "the whole clip"
    click.echo(f"{spec}\n  identity  {rb.backbone.identity}\n  mode      {rb.mode} (sees {sees})\n"
               f"  blocks    0..{rb.backbone.num_blocks} for a {frames} x {size} x {size} clip:")
    for block, shape in block_shapes(rb.backbone, frames, size, size).items():
        click.echo(f"  block {block:>3}  tokens {shape[0]:>3} x {shape[1]:>3} x {shape[2]:>3}  channels {shape[3]}")


@backbone_group.command("check")
@click.argument("spec")
@dataset_option
@click.option("--t", "ts", type=click.FloatRange(0.0, T_MAX), multiple=True, default=(100.0, 300.0, 600.0),
              show_default=True, help="Noise levels (0..1000) to check (repeatable).")
@click.option("--clips", type=click.IntRange(min=1), default=4, show_default=True,
              help="Test clips to noise and denoise.")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True,
              help="Denoising steps of the model's scheduler.")
@click.option("--device", default="auto", show_default=True)
def check_cmd(spec: str, dataset: str | None, ts: tuple[float, ...], clips: int, steps: int, device: str) -> None:
    """Noise a few test clips' latents to each t, denoise them with the model's own scheduler back to 0, and print
    the error against the clean latents beside the error of doing nothing. A model whose latents are scaled and
    conditioned right lands well below 'nothing'; one that is wrong lands near or above it."""
    import numpy as np
    import torch

    from diffprobe.backbones.base import clip_noise
    from diffprobe.backbones.registry import load_backbone
    from diffprobe.data.splits import ROLES, resolve_roles
    from diffprobe.utils.runtime import resolve_device

    rb = load_backbone(spec, resolve_device(device))
    backbone = rb.backbone
    if backbone.encoder is None or not hasattr(backbone, "denoise"):
        raise InputError(f"{spec}: {type(backbone).__name__} is not a latent diffusion model; nothing to "
                                   "denoise")
    data = rb.dataset_or_default(dataset)
    test = resolve_roles(dict.fromkeys(ROLES, data))["test"].clips
    n = min(clips, len(test))
    video = torch.from_numpy(np.stack([c["video"] for c in test.batch(range(n))])).to(backbone.device)
    ids = torch.arange(n)
    z = backbone.encoder.features(video, ids, [0], 0.0, 0)[0].float()  # (n, T', h, w, C)
    click.echo(f"{spec} on {n} test clip(s) of {data}: latents {tuple(z.shape[1:])}, std {float(z.std()):.3f}")
    click.echo(f"{'t':>6} {'MSE denoised':>14} {'MSE noisy (nothing)':>20} {'ratio':>8}")
    for t in ts:
        x_t, _ = backbone.noise(z, t, clip_noise(z, ids, 0, 0))
        z_hat = backbone.denoise(x_t, t, z, steps)
        err, base = float((z_hat - z).square().mean()), float((x_t - z).square().mean())
        click.echo(f"{t:>6g} {err:>14.4f} {base:>20.4f} {err / base if base > 0 else float('nan'):>8.3f}")
