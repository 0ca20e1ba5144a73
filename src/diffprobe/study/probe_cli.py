"""`diffprobe probe`: train one task's readout on a backbone's features, print and store the metrics."""

from __future__ import annotations

from pathlib import Path

import click

from diffprobe.utils.cliopts import (
    allow_size_change_option,
    cache_option,
    dataset_option,
    ensemble_option,
    name_option,
    noise_seed_option,
    overrides_option,
    pool_option,
    quiet_option,
    report_skipped,
    store_option,
    study_option,
    t_option,
    workers_option,
)


@click.command("probe")
@click.option("--task", "task_name", required=True,
              help="image_cls, action, depth, camera_pose, point_tracking or box_tracking.")
@click.option("--backbone", "spec", required=True, help="KIND:PATH[@KEY=VALUE,...] (see `diffprobe extract --help`).")
@dataset_option
@click.option("--train-data", default=None, metavar="SPEC", help="Dataset of the train role (default: --dataset).")
@click.option("--val-data", default=None, metavar="SPEC", help="Dataset of the val role (default: --dataset).")
@click.option("--test-data", default=None, metavar="SPEC", help="Dataset of the test role (default: --dataset).")
@click.option("--block", type=click.IntRange(min=0), required=True)
@t_option
@noise_seed_option
@ensemble_option
@pool_option
@click.option("--stream", is_flag=True, help="Compute the features as the probes read them, never caching them: no "
              "disk for features, the backbone runs on every epoch's batches (`diffprobe study --estimate` compares "
              "the two).")
@click.option("--preset", default="tiny", show_default=True, help="ProbeConfig preset (tiny, base).")
@overrides_option
@store_option
@study_option
@name_option
@click.option("--device", default="auto", show_default=True)
@allow_size_change_option
@cache_option
@workers_option
@quiet_option
def probe_cmd(task_name: str, spec: str, dataset: str | None, train_data: str | None, val_data: str | None,
              test_data: str | None, block: int, t: float, noise_seed: int, ensemble: int, pool: str, stream: bool,
              preset: str, assignments: tuple[str, ...], store: Path, study: str, name: str | None, device: str,
              allow_size_change: bool, cache_dir: Path, workers: int, quiet: bool) -> None:
    """Train a task's probe on frozen features; the test metric of the validation-selected probe is stored.

    The train / val / test roles come from --dataset (its own splits, or a seeded division of a dataset without
    them; SPEC#SPLIT picks a split), each overridable with --train-data / --val-data / --test-data."""
    from diffprobe.backbones.registry import load_backbone
    from diffprobe.features.cache import FeatureCache
    from diffprobe.features.pooling import Pool
    from diffprobe.features.sources import identity_for
    from diffprobe.study.store import Cell, ResultsStore, clips_key
    from diffprobe.tasks import TASKS
    from diffprobe.tasks.probe_config import ProbeConfig
    from diffprobe.tasks.roles import data_identity, task_roles
    from diffprobe.tasks.runner import run_probe
    from diffprobe.utils.runtime import resolve_device

    dev = resolve_device(device)
    cfg = ProbeConfig.preset(preset).override(assignments)
    pool = str(Pool.parse(pool)) if pool else ""  # checked before any data is opened
    resolved = load_backbone(spec, dev)
    resolved.backbone.check_request([block], t, noise_seed, ensemble)  # refused before any clip is read
    default = resolved.dataset_or_default(dataset)
    specs = {"train": train_data or default, "val": val_data or default, "test": test_data or default}
    roles = task_roles(task_name, specs)
    resolved.check_clips([rd.dataset for rd in roles.values()], spec, allow_size_change)
    # pooled features are another feature source: their cells are stored apart
    identity = identity_for(resolved.backbone, roles["test"].clips, TASKS[task_name].view) + (
        f"+pool{pool}" if pool else "")
    cell = Cell(study=study, backbone=name or spec, identity=identity, mode=resolved.mode,
                checkpoint_step=resolved.step, block=block, t=t, noise_seed=noise_seed, ensemble=ensemble,
                task=task_name, dataset=data_identity(roles), clips=clips_key(None), probe_seed=cfg.seed,
                config_hash=cfg.replace(seed=0).hash())
    with ResultsStore(store) as results:
        if results.has(cell):
            rows = results.query(**cell.__dict__)
            click.echo(f"already in {store}: " + ", ".join(f"{r['metric']}={r['value']:.4f}" for r in rows))
            return
        res = run_probe(resolved.backbone, roles, task_name, block, t, noise_seed, cfg, FeatureCache(cache_dir),
                        dev, ensemble, progress=not quiet, workers=workers, pool=pool, stream=stream)
        results.add(cell, res.test, res.per_clip, data_specs=specs)
    sources = ", ".join(f"{r} {rd.dataset.spec} [{rd.source}, {len(rd.clips)} clips]" for r, rd in roles.items())
    click.echo(f"{task_name} on {identity} block {block} t={t:g} (lr {res.chosen_lr:g}, "
               f"wd {res.chosen_weight_decay:g}, step {res.chosen_step}; {sources}): "
               + ", ".join(f"{k}={v:.4f}" for k, v in res.test.items()))
    report_skipped([rd.dataset for rd in roles.values()], cache_dir)
