"""`diffprobe motion`: the paper's Figure 4 for any backbone (:mod:`diffprobe.study.motion`; protocol and
definition: :mod:`diffprobe.features.motion`, docs/motion.md)."""

from __future__ import annotations

from pathlib import Path

import click

from diffprobe.features.motion import DEFAULT_LAYOUT, REGION_LAYOUTS
from diffprobe.utils.cliopts import allow_size_change_option, dataset_option, noise_seed_option, t_option


@click.command("motion")
@click.option("--backbone", "spec", required=True, help="KIND:PATH[@KEY=VALUE,...], e.g. walt:runs/video.")
@dataset_option
@click.option("--block", type=click.IntRange(min=0), required=True, help="The block whose tokens are read.")
@t_option
@noise_seed_option
@click.option("--clips", "n_clips", type=click.IntRange(min=1), default=4, show_default=True,
              help="How many clips of the dataset's test role (the first ones).")
@click.option("--regions", type=click.Choice(sorted(REGION_LAYOUTS)), default=DEFAULT_LAYOUT, show_default=True,
              help="Which regions play: quadrants (a 2x2 grid, 4 variants) or thirds (3 vertical strips, 3 variants).")
@click.option("--device", default="auto", show_default=True)
@allow_size_change_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for motion.json and the figures.")
def motion_cmd(spec: str, dataset: str | None, block: int, t: float, noise_seed: int, n_clips: int, regions: str,
               device: str, allow_size_change: bool, out_dir: Path) -> None:
    """First-frame tokens of videos where only one region plays (the paper's Figure 4): a figure per clip and the
    motion ratio (token change where the region plays over where it is frozen; 1.0 for an image model)."""
    from diffprobe.backbones.registry import load_backbone
    from diffprobe.data.splits import resolve_roles
    from diffprobe.study.motion import RESULTS_FILE, MotionConfig, run_motion
    from diffprobe.utils.runtime import resolve_device

    resolved = load_backbone(spec, resolve_device(device))
    resolved.backbone.check_request([block], t, noise_seed)  # refused before any clip is read
    data_spec = resolved.dataset_or_default(dataset)
    role = resolve_roles({"test": data_spec})["test"]
    resolved.check_clips([role.dataset], spec, allow_size_change)
    config = MotionConfig(spec, data_spec, block, t, noise_seed, n_clips, regions)
    mean = run_motion(resolved, role, config, out_dir, click.echo)
    click.echo(f"mean motion ratio over {n_clips} clip(s): {mean:.4f} -> {out_dir / RESULTS_FILE}")
