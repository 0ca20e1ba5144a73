"""`diffprobe match`: training-free point tracking by feature matching (:mod:`diffprobe.readouts.match`) on a
backbone's features; the setting is chosen on the validation split, the test metrics are printed and stored."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import click

from diffprobe.readouts.match import MatchGrid
from diffprobe.study.store import MATCH_TAG
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

TASK = "point_tracking"  #: the task whose targets, query mode and metrics the matcher is scored by


_GRID = MatchGrid()
HELP = (
    "Track points with no trained readout: each query's feature is matched against every frame's features (cosine "
    "similarity, soft-argmax around the peak, occluded below a threshold; docs/readouts.md).\n\n"
    f"Temperature {_GRID.temperatures}, window {_GRID.windows} tokens and occlusion threshold (never, or the "
    f"{'/'.join(f'{q:.0%}' for q in _GRID.quantiles)} quantile of the validation peak similarities) are chosen on "
    "the val split by average Jaccard; the test split's point-tracking metrics are printed and stored as a cell "
    f"whose config hash starts with {MATCH_TAG!r}.")


def match_config_hash(blocks: Sequence[int], noise_seeds: Sequence[int], grid: MatchGrid) -> str:
    """The ``config_hash`` of a matcher cell: the blocks concatenated, the seeds averaged and the grid searched."""
    blob = json.dumps({"blocks": list(blocks), "noise_seeds": list(noise_seeds), "grid": dataclasses.asdict(grid)},
                      sort_keys=True)
    return MATCH_TAG + hashlib.sha256(blob.encode()).hexdigest()[:12]


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
@store_option
@study_option
@name_option
@click.option("--device", default="auto", show_default=True)
@cache_option
@workers_option
@quiet_option
def match_cmd(spec: str, dataset: str | None, blocks: tuple[int, ...], t: float, noise_seeds: tuple[int, ...],
              upsample: int, store: Path, study: str, name: str | None, device: str, cache_dir: Path, workers: int,
              quiet: bool) -> None:
    """Track points with no trained readout (see ``HELP``)."""
    import numpy as np

    from diffprobe.backbones.registry import load_backbone
    from diffprobe.features.cache import FeatureCache
    from diffprobe.features.sources import ensure_features, identity_for
    from diffprobe.readouts.match import choose, hyperfeatures, match_split, predictions
    from diffprobe.study.store import Cell, ResultsStore, clips_key
    from diffprobe.tasks import make_task
    from diffprobe.tasks.roles import data_identity, task_context, task_roles
    from diffprobe.tasks.runner import ensure_targets
    from diffprobe.tasks.targets import load_targets
    from diffprobe.utils.runtime import resolve_device

    dev = resolve_device(device)
    blocks, seeds = tuple(dict.fromkeys(blocks)), tuple(dict.fromkeys(noise_seeds))
    resolved = load_backbone(spec, dev)
    for seed in seeds:  # refused before any clip is read
        resolved.backbone.check_request(list(blocks), t, seed, 1)
    roles = task_roles(TASK, resolved.dataset_or_default(dataset))
    resolved.check_clips([rd.dataset for rd in roles.values()], spec, False)
    task = make_task(TASK, task_context(roles))
    grid = MatchGrid(upsample=upsample)
    identity = identity_for(resolved.backbone, roles["test"].clips, task.view)
    cell = Cell(study=study, backbone=name or spec, identity=identity, mode=resolved.mode,
                checkpoint_step=resolved.step, block=blocks[0], t=t, noise_seed=seeds[0], ensemble=1, task=TASK,
                dataset=data_identity(roles), clips=clips_key(None), probe_seed=0,
                config_hash=match_config_hash(blocks, seeds, grid))
    cache = FeatureCache(cache_dir)
    size, frames = (task.ctx.height, task.ctx.width), task.ctx.frames

    def split(role: str) -> tuple[dict[str, np.ndarray], Iterator]:
        clips = roles[role].clips
        targets = load_targets(ensure_targets(task, clips, cache, progress=not quiet, workers=workers), task.name)
        sets = [ensure_features(resolved.backbone, clips, task.view, list(blocks), t, seed, cache,
                                progress=not quiet, workers=workers) for seed in seeds]
        feats = (hyperfeatures([[s[b].take([i])[0] for s in sets] for b in blocks]) for i in range(len(clips)))
        return targets, feats

    with ResultsStore(store) as results:
        if results.has(cell):
            rows = results.query(**cell.__dict__)
            click.echo(f"already in {store}: " + ", ".join(f"{r['metric']}={r['value']:.4f}" for r in rows))
            return
        val, val_feats = split("val")
        params, val_score = choose(grid, val_feats, val["query"], val["valid"], size, frames,
                                   lambda p: task.metrics(p, val)[task.primary_metric])
        test, test_feats = split("test")
        tracks, peaks = match_split(test_feats, test["query"], test["valid"], size, frames, [params.temperature],
                                    [params.window], grid.upsample)
        metrics, per_clip = task.evaluate(predictions(tracks[0, 0], peaks, params.threshold), test)
        results.add(cell, metrics, per_clip, data_specs={r: rd.dataset.spec for r, rd in roles.items()})
    sources = ", ".join(f"{r} {rd.dataset.spec} [{rd.source}, {len(rd.clips)} clips]" for r, rd in roles.items()
                        if r != "train")
    click.echo(f"{TASK} (match) on {identity} block {'+'.join(map(str, blocks))} t={t:g} noise seed "
               f"{'+'.join(map(str, seeds))} (temperature {params.temperature:g}, window {params.window:g}, threshold "
               f"{params.threshold:.4f}; val {task.primary_metric} {val_score:.4f}; {sources}): "
               + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
