"""``diffprobe world``: write Probe World clips to shards, with previews (GIFs and a PNG contact sheet)."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from diffprobe.data.preview import contact_sheet, save_gif
from diffprobe.data.shards import write_shards
from diffprobe.data.world import CATEGORIES, MOTIONS, SPLITS, WORLD_VERSION, ProbeWorld, ProbeWorldConfig
from diffprobe.utils.cliopts import overrides_option


@click.command("world")
@click.option("--preset", default="tiny", show_default=True, help=f"one of {sorted(ProbeWorldConfig.PRESETS)}")
@click.option("--num", type=int, default=16, show_default=True, help="clips to write (the first NUM of the split)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--split", type=click.Choice(list(SPLITS)), default="train", show_default=True)
@overrides_option
@click.option("--shard-size", type=int, default=256, show_default=True, help="clips per shard file")
@click.option("--preview", "num_preview", type=int, default=8, show_default=True,
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
        contact_sheet(clips, preview / "contact_sheet.png", names={"categories": CATEGORIES, "motions": MOTIONS})
        click.echo(f"preview: {preview}/contact_sheet.png and {shown} GIF(s)")
