"""`diffprobe extract`: a backbone's features of a dataset's splits into the cache (under torchrun, every rank
extracts its share of the shards into the shared cache; rank 0 alone prints and marks each set complete)."""

from __future__ import annotations

from pathlib import Path

import click

from diffprobe.features.extract import EXTRACT_BATCH, SHARD_CLIPS
from diffprobe.utils.cliopts import (
    allow_size_change_option,
    cache_option,
    dataset_option,
    ensemble_option,
    noise_seed_option,
    pool_option,
    quiet_option,
    report_skipped,
    t_option,
    workers_option,
)


@click.command("extract")
@click.option("--backbone", "spec", required=True,
              help="KIND:PATH[@KEY=VALUE,...], e.g. walt:runs/video, walt:runs/video@step=500, "
                   "walt-untrained:runs/video, latents:runs/tok.")
@dataset_option
@click.option("--block", "blocks", type=click.IntRange(min=0), multiple=True, required=True,
              help="Block(s) to read (repeatable).")
@t_option
@noise_seed_option
@ensemble_option
@pool_option
@click.option("--split", "splits", multiple=True, help="Split(s) of the dataset (default: all of its splits).")
@click.option("--view", type=click.Choice(["clip", "frame0"]), default="clip", show_default=True,
              help="clip: the whole clip; frame0: the first frame as an image (image classification).")
@click.option("--batch-size", type=click.IntRange(min=1), default=EXTRACT_BATCH, show_default=True,
              help="Clips per forward (halved for the rest of the run if the device runs out of memory).")
@click.option("--shard-size", default=SHARD_CLIPS, show_default=True, type=click.IntRange(min=1),
              help="Most clips per cache shard (the unit of resumption and of the work split across torchrun "
                   "ranks), rounded down to a power of two and cut to what fits 256 MB.")
@click.option("--device", default="auto", show_default=True)
@allow_size_change_option
@cache_option
@workers_option
@quiet_option
def extract_cmd(spec: str, dataset: str | None, blocks: tuple[int, ...], t: float, noise_seed: int, ensemble: int,
                pool: str,
                splits: tuple[str, ...], view: str, batch_size: int, shard_size: int, device: str,
                allow_size_change: bool, cache_dir: Path, workers: int, quiet: bool) -> None:
    """Extract features at (blocks, t, noise seed) for each split; finished shards are never recomputed. Launched by
    torchrun, the ranks share the shards."""
    from diffprobe.backbones.registry import load_backbone
    from diffprobe.data.registry import open_dataset
    from diffprobe.features.cache import FeatureCache
    from diffprobe.features.sources import ensure_features
    from diffprobe.utils.distributed import cleanup_distributed, setup_distributed

    ctx = setup_distributed(device)
    try:
        resolved = load_backbone(spec, ctx.device)
        resolved.backbone.check_request(blocks, t, noise_seed, ensemble)  # refused before any clip is read
        ds = open_dataset(resolved.dataset_or_default(dataset))
        resolved.check_clips([ds], spec, allow_size_change)
        cache = FeatureCache(cache_dir)
        for split in splits or ds.splits:
            sets = ensure_features(resolved.backbone, ds.clips(split), view, list(blocks), t, noise_seed, cache,
                                   ensemble, batch_size=batch_size, progress=not quiet, workers=workers, pool=pool,
                                   shard_size=shard_size, ctx=ctx)
            for block, fs in sets.items():
                if ctx.is_main:
                    click.echo(f"{split} block {block}: {len(fs)} clips x {fs.feature_shape} -> {fs.path}")
        if ctx.is_main:
            report_skipped([ds], cache.root)
    finally:
        cleanup_distributed()
