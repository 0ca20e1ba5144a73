"""Click options shared by the stage commands (one definition each, so every command spells them the same)."""

from __future__ import annotations

import os
from pathlib import Path

import click

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
