"""``diffprobe backbone info SPEC`` (blocks, token grids and channels for a clip size) and ``diffprobe backbone
check SPEC`` (noise a few clips to t, denoise them back with the model's own scheduler: is the latent scaling and
conditioning right?)."""

from __future__ import annotations

from typing import Any

import click

from diffprobe.backbones.base import T_MAX
from diffprobe.errors import InputError
from diffprobe.utils.cliopts import dataset_option, pool_option


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
@click.option("--estimate", is_flag=True, help="Also print the weights' bytes, one forward's activation memory, the "
              "process's peak memory and the feature cache's bytes per clip (and for --clips clips) at each block.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Clips in the forward whose activations --estimate counts (default: extraction's batch).")
@click.option("--clips", type=click.IntRange(min=1), default=None,
              help="With --estimate: the cache of an extraction of this many clips, per noise level.")
@pool_option
def info_cmd(spec: str, frames: int, size: int, device: str, estimate: bool, batch: int | None,
             clips: int | None, pool: str) -> None:
    """Print the backbone's identity and, for a clip of FRAMES x SIZE x SIZE, every block's token grid (T_f, H_f,
    W_f) and channel count, computed on fake tensors (shapes only, no compute) where the kind allows it."""
    from diffprobe.backbones.registry import load_backbone
    from diffprobe.backbones.shapes import forward_shapes
    from diffprobe.features.extract import EXTRACT_BATCH, FEATURE_DTYPE
    from diffprobe.features.pooling import Pool
    from diffprobe.utils.runtime import resolve_device

    if not estimate and (batch is not None or clips is not None or pool):
        raise InputError("--batch, --clips and --pool go with --estimate")
    pooled = Pool.parse(pool).shape if pool else None
    baseline = 0
    if estimate:
        from diffprobe.backbones.shapes import import_libraries, resident_bytes

        import_libraries()
        baseline = resident_bytes()  # this process before the load: what an extraction's holds besides the model
    rb = load_backbone(spec, resolve_device(device))
    sees = "each frame alone" if rb.mode == "image" else "the whole clip"
    identity = rb.backbone.identity_at(frames, size, size)  # with what the clip size changes (a VAE's tiling)
    click.echo(f"{spec}\n  identity  {identity}\n  mode      {rb.mode} (sees {sees})")
    if not estimate:
        fwd = forward_shapes(rb.backbone, frames, size, size)
        click.echo(f"  blocks    0..{rb.backbone.num_blocks} for a {frames} x {size} x {size} clip "
                   f"({_HOW[fwd.fake]}):")
        for block, shape in fwd.shapes.items():
            click.echo(f"  block {block:>3}  tokens {shape[0]:>3} x {shape[1]:>3} x {shape[2]:>3}  channels {shape[3]}")
        return
    from diffprobe.backbones.shapes import estimate as estimate_of

    batch = batch or EXTRACT_BATCH  # the extraction's defaults
    est = estimate_of(rb.backbone, frames, size, size, batch, FEATURE_DTYPE, clips, pooled, baseline)
    dtype = str(FEATURE_DTYPE).removeprefix("torch.") + (f", pooled to {Pool.parse(pool)}" if pool else "")
    for line in estimate_lines(est, frames, size, dtype):
        click.echo(line)


_HOW = {True: "shapes on fake tensors, nothing computed", False: "a real forward: this kind cannot run on fake "
        "tensors"}


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units, three significant digits (``61.4 kB``, ``1.23 GB``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 1000 else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def estimate_lines(est: Any, frames: int, size: int, feature_dtype: str) -> list[str]:
    """The ``backbone info --estimate`` table of an :class:`~diffprobe.backbones.shapes.Estimate`."""
    fwd = est.forward
    if fwd.fake:
        act = (f"peak of the tensors alive at once in one forward of {est.batch} clip(s) on fake tensors (inputs, "
               "activations and returned features; weights, allocator slack and kernel workspace not counted)")
    else:
        act = (f"LOWER BOUND: the blocks' outputs for {est.batch} clip(s) only (this kind cannot run on fake "
               "tensors, so the intermediate tensors were not counted)")
    cache = f"{est.clips} clips" if est.clips is not None else "-"
    lines = [f"  weights      {human_bytes(est.weight_bytes):>9}  {est.parameters:,} parameters in "
             f"{'/'.join(est.weight_dtypes) or 'none'}",
             f"  activations  {human_bytes(est.activation_bytes):>9}  {act}",
             f"  peak memory  {human_bytes(est.peak_bytes):>9}  the process's peak resident memory (compare with top's "
             f"RES or /usr/bin/time's max RSS): a {human_bytes(est.baseline)} baseline (this process before the load: "
             "python, torch and the libraries) + weights + activations",
             f"  blocks 0..{len(fwd.shapes) - 1} for a {frames} x {size} x {size} clip ({_HOW[fwd.fake]}); features "
             f"per (block, t) in {feature_dtype}:",
             f"  {'block':>5}  {'tokens T x H x W':>17}  {'channels':>8}  {'per clip':>9}  {'cache ' + cache:>14}"]
    for block, shape in fwd.shapes.items():
        per_cache = est.cache_bytes(block)
        lines.append(f"  {block:>5}  {shape[0]:>5} x {shape[1]:>3} x {shape[2]:>3}  {shape[3]:>8}  "
                     f"{human_bytes(est.feature_bytes[block]):>9}  "
                     f"{human_bytes(per_cache) if per_cache is not None else '-':>14}")
    total = sum(est.feature_bytes.values())
    lines.append(f"  {'all':>5}  {'':>17}  {'':>8}  {human_bytes(total):>9}  "
                 f"{human_bytes(total * est.clips) if est.clips is not None else '-':>14}  (one noise level, every "
                 "block; x the noise levels of a sweep)")
    return lines


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
