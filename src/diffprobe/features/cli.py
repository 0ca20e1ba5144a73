"""`diffprobe extract`: a backbone's features of Probe World splits into the cache."""

from __future__ import annotations

from pathlib import Path

import click

from diffprobe.utils.cliopts import cache_option, quiet_option


@click.command("extract")
@click.option("--backbone", "spec", required=True,
              help="KIND:PATH, e.g. walt:runs/video, walt@500:runs/video, walt-untrained:runs/video, latents:runs/tok.")
@click.option("--block", "blocks", type=int, multiple=True, required=True, help="Block(s) to read (repeatable).")
@click.option("--t", "t", type=float, default=0.0, show_default=True, help="Noise level, 0 (clean) .. 1000.")
@click.option("--noise-seed", default=0, show_default=True)
@click.option("--ensemble", default=1, show_default=True, help="Average features over this many noise draws.")
@click.option("--split", "splits", multiple=True, default=("train", "val", "test"), show_default=True)
@click.option("--view", type=click.Choice(["clip", "frame0"]), default="clip", show_default=True,
              help="clip: the whole clip; frame0: the first frame as an image (image classification).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--device", default="auto", show_default=True)
@cache_option
@quiet_option
def extract_cmd(spec: str, blocks: tuple[int, ...], t: float, noise_seed: int, ensemble: int, splits: tuple[str, ...],
                view: str, batch_size: int, device: str, cache_dir: Path, quiet: bool) -> None:
    """Extract features at (blocks, t, noise seed) for each split; finished shards are never recomputed."""
    from diffprobe.backbones.registry import load_backbone
    from diffprobe.features.cache import FeatureCache
    from diffprobe.features.sources import ensure_features
    from diffprobe.utils.runtime import resolve_device

    resolved = load_backbone(spec, resolve_device(device))
    cache = FeatureCache(cache_dir)
    for split in splits:
        sets = ensure_features(resolved.backbone, resolved.world, split, view, list(blocks), t, noise_seed, cache,
                               ensemble, batch_size=batch_size, progress=not quiet)
        for block, fs in sets.items():
            click.echo(f"{split} block {block}: {len(fs)} clips x {fs.feature_shape} -> {fs.path}")
