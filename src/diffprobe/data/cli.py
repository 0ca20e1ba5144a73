"""``diffprobe world`` (Probe World clips to shards, with previews) and ``diffprobe data info / preview`` (what a
dataset spec resolves to, and its clips with their labels drawn on)."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from diffprobe.data.dataset import LABEL_FIELDS, DatasetError
from diffprobe.data.preview import contact_sheet, save_gif, spread_over_labels
from diffprobe.data.shards import write_shards
from diffprobe.data.world import CATEGORIES, MOTIONS, SPLITS, WORLD_VERSION, ProbeWorld, ProbeWorldConfig
from diffprobe.errors import InputError
from diffprobe.utils.cliopts import overrides_option, quiet_option, report_skipped
from diffprobe.utils.io import atomic_write_json


@click.command("world")
@click.option("--preset", default="tiny", show_default=True, help=f"one of {sorted(ProbeWorldConfig.PRESETS)}")
@click.option("--num", type=click.IntRange(min=1), default=16, show_default=True,
              help="clips to write (the first NUM of the split)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--split", type=click.Choice(list(SPLITS)), default="train", show_default=True)
@overrides_option
@click.option("--shard-size", type=click.IntRange(min=1), default=256, show_default=True, help="clips per shard file")
@click.option("--preview", "num_preview", type=click.IntRange(min=0), default=8, show_default=True,
              help="clips shown in the GIFs and the contact sheet (0: none)")
def world(preset: str, num: int, out_dir: Path, split: str, assignments: tuple[str, ...], shard_size: int,
          num_preview: int) -> None:
    """Generate NUM clips of Probe World into OUT: shards, config.json and preview/ (GIF per clip, contact sheet)."""
    config = ProbeWorldConfig.preset(preset).override(assignments)
    dataset = ProbeWorld(config, split)
    if num > len(dataset):
        raise click.BadParameter(f"{num} clips asked but the {split!r} split has {len(dataset)} "
                                 f"(raise {split}_size with --set)", param_hint="--num")
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save(out_dir / "config.json")
    source = {"generator": "ProbeWorld", "version": WORLD_VERSION, "config": config.to_dict(), "split": split}
    paths = write_shards(out_dir, num, dataset.batch, source, shard_size=shard_size)
    click.echo(f"wrote {num} clips in {len(paths)} shard(s) to {out_dir} (read with diffprobe.data.shards."
               f"ShardDataset)")
    shown = min(num_preview, num)
    if shown:
        preview = out_dir / "preview"
        clips = dataset.batch(list(range(shown)), extras=True)
        for i, clip in enumerate(tqdm(clips, desc="preview GIFs", unit="clip")):
            save_gif(clip, preview / f"clip-{i:06d}.gif")
        contact_sheet(clips, preview / "contact_sheet.png", names={"label": CATEGORIES, "action": MOTIONS})
        click.echo(f"preview: {preview}/contact_sheet.png and {shown} GIF(s)")


@click.group("data")
def data_group() -> None:
    """Inspect datasets given by spec (KIND:PATH[@KEY=VALUE,...], e.g. tapvid:davis.pkl@mode=strided)."""


@data_group.command("info")
@click.argument("spec")
@click.option("--full", is_flag=True, help="Read and check every clip (default: the first and the last of each split).")
@quiet_option
def info_cmd(spec: str, full: bool, quiet: bool) -> None:
    """Print a dataset's identity, splits and clip counts, fields, label spaces and clip size, after reading the
    first and the last clip of each split (--full: every clip) and checking them: frame count against the clip
    sampler, image decodes, coordinate ranges. A problem is an error naming the file (with @on_bad=skip in the spec:
    such clips are left out, counted and listed with their reasons)."""
    from diffprobe.data.check import check_dataset
    from diffprobe.data.registry import open_dataset

    ds = open_dataset(spec)
    check = check_dataset(ds, full=full, progress=not quiet)
    d = ds.describe()
    click.echo(f"{d['spec']}\n  identity   {d['identity']}\n  clips      {d['frames']} frames of "
               f"{d['height']}x{d['width']} px")
    click.echo("  splits     " + ", ".join(f"{k} ({v} clip{'' if v == 1 else 's'})" for k, v in d["splits"].items()))
    click.echo("  fields     " + ", ".join(d["fields"]))
    for field, names in d["label_spaces"].items():
        shown = ", ".join(f"{i}:{n}" for i, n in enumerate(names[:12])) + (" ..." if len(names) > 12 else "")
        click.echo(f"  {field:<10} {len(names)} classes: {shown}")
    if d["max_objects"]:
        click.echo(f"  objects    at most {d['max_objects']} boxes a clip")
    if "tracks" in ds.fields:
        click.echo(f"  queries    TAP-Vid '{d['query_mode']}' mode")
    how = ("every clip (on_bad=skip reads each split whole to leave the bad clips out)" if ds.on_bad == "skip"
           else "every clip" if full else "the first and the last clip of each split (--full: every clip)")
    click.echo(f"  checked    {how}" + ("" if check.skipped else ": no problem"))
    for split in check.splits:
        click.echo(f"    {split.summary(limit=5)}")
    if check.skipped:
        click.echo(f"  skipped    {check.skipped} clip(s) (on_bad=skip), reasons above")
    if not check.clips:
        raise DatasetError(f"{spec}: no clip left in any split"
                           + (f" ({check.skipped} skipped, listed above)" if check.skipped else ""))


@data_group.command("preview")
@click.argument("spec")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--split", default=None, help="Split to show (default: the dataset's first).")
@click.option("--num", type=int, default=4, show_default=True,
              help="Clips shown (spread over the classes of a labelled dataset, else the first NUM).")
def preview_cmd(spec: str, out_dir: Path, split: str | None, num: int) -> None:
    """Write a contact sheet (and a GIF per clip) with the labels drawn on the frames: tracks with visibility, boxes,
    the depth map, the class names; the quickest check that a reader reads a dataset right. A labelled dataset shows
    its classes in turn (each class once before any twice), so every class appears when NUM allows."""
    from diffprobe.data.registry import open_dataset

    ds = open_dataset(spec)
    clips = ds.clips(split or ds.splits[0])
    field = next((f for f in LABEL_FIELDS if f in ds.fields), None)
    chosen = spread_over_labels(clips.labels(field), num) if field else list(range(min(num, len(clips))))
    shown = clips.batch(chosen)
    if not shown:
        raise InputError(f"{spec}: split {split or ds.splits[0]!r} has no clips")
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(tqdm(shown, desc="preview GIFs", unit="clip")):
        save_gif(clip, out_dir / f"clip-{i:06d}.gif")
    contact_sheet(shown, out_dir / "contact_sheet.png", names=ds.label_spaces)
    atomic_write_json(out_dir / "dataset.json", {**ds.describe(), "shown": chosen})
    click.echo(f"preview of {len(shown)} clip(s) of {spec}: {out_dir / 'contact_sheet.png'}")
    report_skipped([ds], out_dir)
