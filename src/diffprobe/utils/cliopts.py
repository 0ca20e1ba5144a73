"""Click options shared by the stage commands (one definition each, so every command spells them the same)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from diffprobe.utils.io import atomic_write_json

#: where extracted features, rendered videos and latents are cached unless --cache says otherwise
DEFAULT_CACHE = os.environ.get("DIFFPROBE_CACHE", "diffprobe-cache")

overrides_option = click.option(
    "--set", "assignments", multiple=True, metavar="KEY=VALUE",
    help="Override a config field, KEY=VALUE (dotted keys reach nested configs; `diffprobe config show KIND` lists "
         "the keys). Repeatable.")
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
    "--workers", type=click.IntRange(min=0), default=0, show_default=True,
    help="DataLoader worker processes decoding clips (0: none).")
# shared by the commands that read a backbone's features of a dataset (extract, probe)
t_option = click.option("--t", "t", type=click.FloatRange(0, 1000), default=0.0, show_default=True,
                        help="Noise level, 0 (clean) .. 1000.")
noise_seed_option = click.option("--noise-seed", type=click.IntRange(min=0), default=0, show_default=True)
# shared by the commands that store a cell in a results store (probe, match)
store_option = click.option(
    "--store", type=click.Path(dir_okay=False, path_type=Path), default=Path("results.sqlite"), show_default=True,
    help="Results store (SQLite); a cell already there is not recomputed.")
study_option = click.option("--study", default="adhoc", show_default=True, help="Study name the row is filed under.")
name_option = click.option("--name", default=None,
                           help="Display name of the backbone in the store (default: the spec).")
ensemble_option = click.option("--ensemble", type=click.IntRange(min=1), default=1, show_default=True,
                               help="Average features over this many noise draws.")
pool_option = click.option("--pool", default="", metavar="HxW|TxHxW",
                          help="Average each block's tokens to this grid before caching them (e.g. 4x4, or 2x4x4 "
                               "to pool time too); part of the cache key. Default: no pooling.")
allow_size_change_option = click.option(
    "--allow-size-change", is_flag=True,
    help="Read clips of another size than the backbone was trained on (otherwise an error; never a silent resize).")


#: the file that lists the clips ``on_bad=skip`` left out, in a run's or a cache's folder, keyed by dataset spec
SKIPPED_FILE = "skipped.json"


def skip_reason(record: dict[str, Any]) -> str:
    """One skip record (``{"index", "source", "error"}``) in words: its error, which names the file (the source is
    put in front when the error does not start with it)."""
    source, error = str(record.get("source", "")), str(record.get("error", ""))
    return error if not source or error.startswith(source) else f"{source}: {error}"


def skip_reasons(records: Sequence[dict[str, Any]], limit: int = 3) -> str:
    """The first ``limit`` skip records in words, ``"; "``-separated, with how many more there are."""
    shown = "; ".join(skip_reason(r) for r in records[:limit])
    return shown + (f"; and {len(records) - limit} more" if len(records) > limit else "")


def merge_skipped(path: Path, rows: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Merge ``{spec: {split: [record, ...]}}`` into the JSON file ``path`` (created with its folder): the file's
    entries of other specs, and of other splits of these specs, are kept, these specs' splits are replaced. Read and
    written under an exclusive lock (``flock`` on a hidden ``.<name>.lock`` beside it: a lock of its own, so it never
    waits on a lock the command holds on its folder), the write atomic, so two commands that share a folder keep
    both records. A file that is not such JSON is moved aside to ``<name>.unreadable`` (and said). Returns the merged
    content."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        merged: dict[str, Any] = {}
        if path.exists():
            try:
                merged = json.loads(path.read_text())
                if not isinstance(merged, dict) or not all(isinstance(v, dict) for v in merged.values()):
                    raise ValueError("not {spec: {split: [...]}}")
            except (OSError, ValueError) as e:
                aside = path.with_name(path.name + ".unreadable")
                os.replace(path, aside)
                click.echo(f"{path}: unreadable ({e}); moved to {aside} and written anew", err=True)
                merged = {}
        for spec, splits in rows.items():
            merged.setdefault(spec, {}).update(splits)
        atomic_write_json(path, merged)
        return merged
    finally:
        os.close(fd)  # closing releases the lock


def report_skipped(datasets: Iterable[Any], out_dir: Path | None) -> int:
    """At the end of a command: say, for each of these datasets from which ``on_bad=skip`` left clips out, how many
    and the first reasons (on stderr, also under ``--quiet``), and merge the full list into ``out_dir/skipped.json``
    (keyed by dataset spec, see :func:`merge_skipped`). ``out_dir`` is the folder the command's outputs belong to:
    a run's folder, a feature cache's folder; ``None`` writes no file. It is never chosen here (never the current
    folder by default). Returns the number of clips skipped."""
    rows = {ds.spec: {k: list(v) for k, v in ds.skipped.items() if v}
            for ds in {id(d): d for d in datasets}.values() if any(ds.skipped.values())}
    total = sum(len(v) for splits in rows.values() for v in splits.values())
    if not total:
        return 0
    if out_dir is not None:
        merge_skipped(Path(out_dir) / SKIPPED_FILE, rows)
    where = f"; all listed in {Path(out_dir) / SKIPPED_FILE}" if out_dir is not None else ""
    for spec, splits in rows.items():
        records = [r for v in splits.values() for r in v]
        per_split = ", ".join(f"{len(v)} of {split}" for split, v in splits.items())
        click.echo(f"skipped {len(records)} unreadable clip(s) of {spec} (on_bad=skip: {per_split}{where}): "
                   + skip_reasons(records), err=True)
    return total
