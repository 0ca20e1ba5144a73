"""`diffprobe match`: training-free point tracking by feature matching (:mod:`diffprobe.readouts.match`) on a
backbone's features; the setting is chosen on the validation split, the test metrics are printed and stored."""

from __future__ import annotations

from pathlib import Path

import click

from diffprobe.readouts.match import MatchGrid
from diffprobe.study.store import MATCH_TAG
from diffprobe.tasks.matching import TASK
from diffprobe.utils.cliopts import (
    cache_option,
    dataset_option,
    name_option,
    quiet_option,
    store_option,
    study_option,
    t_option,
    workers_option,
)

_GRID = MatchGrid()
HELP = (
    "Track points with no trained readout: each query's feature is matched against every frame's features (cosine "
    "similarity, soft-argmax around the peak, occluded below a threshold; docs/readouts.md).\n\n"
    f"Temperature {_GRID.temperatures}, window {_GRID.windows} tokens and occlusion threshold (never, or the "
    f"{'/'.join(f'{q:.0%}' for q in _GRID.quantiles)} quantile of the validation peak similarities) are chosen on "
    "the val split by average Jaccard; the test split's point-tracking metrics are printed and stored as a cell "
    f"whose config hash starts with {MATCH_TAG!r}.")


@click.command("match", help=HELP)
@click.option("--backbone", "spec", required=True, help="KIND:PATH[@KEY=VALUE,...] (see `diffprobe extract --help`).")
@dataset_option
@click.option("--block", "blocks", type=click.IntRange(min=0), multiple=True, required=True,
              help="Block to match on; repeated, the blocks are concatenated on channels (each L2-normalised).")
@t_option
@click.option("--noise-seed", "noise_seeds", type=click.IntRange(min=0), multiple=True, default=(0,),
              show_default=True, help="Noise seed; repeated, the features of the seeds are averaged (DIFT's ensemble).")
@click.option("--upsample", type=click.IntRange(min=1), default=1, show_default=True,
              help="Similarity grid cells per pixel side (1: the clip's pixel grid).")
@click.option("--chunk", type=click.IntRange(min=0), default=0, show_default=True,
              help="Pixel frames per chunk: pass the backbone's native frame count (49 for CogVideoX) to track a "
                   "longer clip in chunks, each its own forward, consecutive chunks sharing one frame and the tracks "
                   "chained across them; 0: the whole clip in one forward.")
@store_option
@study_option
@name_option
@click.option("--device", default="auto", show_default=True)
@cache_option
@workers_option
@quiet_option
def match_cmd(spec: str, dataset: str | None, blocks: tuple[int, ...], t: float, noise_seeds: tuple[int, ...],
              upsample: int, chunk: int, store: Path, study: str, name: str | None, device: str, cache_dir: Path,
              workers: int, quiet: bool) -> None:
    """Track points with no trained readout (see ``HELP``)."""
    from diffprobe.backbones.registry import load_backbone
    from diffprobe.features.cache import FeatureCache
    from diffprobe.features.sources import identity_for
    from diffprobe.study.store import Cell, ResultsStore, clips_key, match_config_hash
    from diffprobe.tasks import TASKS
    from diffprobe.tasks.matching import MATCH_ROLES, feature_clips, run_match
    from diffprobe.tasks.roles import data_identity, task_context, task_roles
    from diffprobe.utils.runtime import resolve_device

    dev = resolve_device(device)
    blocks, seeds = tuple(dict.fromkeys(blocks)), tuple(dict.fromkeys(noise_seeds))
    resolved = load_backbone(spec, dev)
    for seed in seeds:  # refused before any clip is read
        resolved.backbone.check_request(list(blocks), t, seed, 1)
    roles = task_roles(TASK, resolved.dataset_or_default(dataset))
    resolved.check_clips([rd.dataset for rd in roles.values()], spec, False)
    grid = MatchGrid(upsample=upsample, chunk=chunk)
    frames = task_context(roles).frames
    test_clips, _ = feature_clips(roles["test"].clips, grid, frames)  # checks the chunk length
    identity = identity_for(resolved.backbone, test_clips, TASKS[TASK].view)
    cell = Cell(study=study, backbone=name or spec, identity=identity, mode=resolved.mode,
                checkpoint_step=resolved.step, block=blocks[0], t=t, noise_seed=seeds[0], ensemble=len(seeds),
                task=TASK, dataset=data_identity(roles), clips=clips_key(None), probe_seed=0,
                config_hash=match_config_hash(blocks, grid))
    with ResultsStore(store) as results:
        if results.has(cell):
            rows = results.query(**cell.__dict__)
            click.echo(f"already in {store}: " + ", ".join(f"{r['metric']}={r['value']:.4f}" for r in rows))
            return
        out = run_match(resolved.backbone, roles, blocks, t, seeds, grid, FeatureCache(cache_dir),
                        progress=not quiet, workers=workers)
        results.add(cell, out.metrics, out.per_clip, data_specs={r: rd.dataset.spec for r, rd in roles.items()})
    sources = ", ".join(f"{r} {roles[r].dataset.spec} [{roles[r].source}, {len(roles[r].clips)} clips]"
                        for r in MATCH_ROLES)
    p, chunks = out.params, f" in chunks of {chunk} frames" if chunk else ""
    click.echo(f"{TASK} (match) on {identity} block {'+'.join(map(str, blocks))} t={t:g} noise seed "
               f"{'+'.join(map(str, seeds))}{chunks} (temperature {p.temperature:g}, window {p.window:g}, threshold "
               f"{p.threshold:.4f}; val {TASKS[TASK].primary_metric} {out.val_score:.4f}; {sources}): "
               + ", ".join(f"{k}={v:.4f}" for k, v in out.metrics.items()))
