"""Click options shared by the stage commands (one definition each, so every command spells them the same)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from diffprobe.utils.io import atomic_write_json

#: where extracted features, rendered videos and latents are cached unless --cache says otherwise
DEFAULT_CACHE = os.environ.get("DIFFPROBE_CACHE", "diffprobe-cache")

overrides_option = click.option(
    "--set", "assignments", multiple=True, metavar="KEY=VALUE",
    help="Override a config field (dotted keys reach nested configs, e.g. --set train.steps=200). Repeatable.")
cache_option = click.option(
    "--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE,
    show_default=True, help="Feature/video cache folder (env DIFFPROBE_CACHE).")
resume_option = click.option(
    "--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint (exactly).")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
dataset_option = click.option(
    "--dataset", "dataset", default=None, metavar="SPEC",
    help="Dataset spec KIND:PATH[@KEY=VALUE,...] (probeworld:tiny, tapvid:FILE.pkl, kinetics:DIR, ...; see "
         "`diffprobe data info`). Default: the data the backbone was trained on.")
workers_option = click.option(
    "--workers", default=0, show_default=True, help="DataLoader worker processes decoding clips (0: none).")


def report_skipped(datasets: Iterable[Any], out_dir: Path | None) -> int:
    """Say how many clips ``on_bad=skip`` left out of these datasets, listing every one in ``out_dir/skipped.json``
    (beside the command's outputs); returns the count."""
    rows = {ds.spec: ds.skipped for ds in {id(d): d for d in datasets}.values() if any(ds.skipped.values())}
    total = sum(len(v) for split in rows.values() for v in split.values())
    if not total:
        return 0
    if out_dir is not None:
        atomic_write_json(out_dir / "skipped.json", rows)
    where = f" (all listed in {out_dir / 'skipped.json'})" if out_dir is not None else ""
    first = [f"{r['source']}: {r['error']}" for split in rows.values() for v in split.values() for r in v][:3]
    click.echo(f"skipped {total} unreadable clip(s){where}: " + "; ".join(first), err=True)
    return total
