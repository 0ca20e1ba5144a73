"""The ``diffprobe`` command line.

Each pipeline stage owns its commands in its own module; this group only maps command names to them and
imports a stage's module when its command is run, so ``diffprobe --help`` stays fast.
"""

from __future__ import annotations

import importlib

import click

#: command name -> "module:attribute" of a ``click.Command``. One line per command, in pipeline order.
COMMANDS: dict[str, str] = {
    "world": "diffprobe.data.cli:world",
    "data": "diffprobe.data.cli:data_group",
    "train-tokenizer": "diffprobe.train.cli:train_tokenizer_cmd",
    "train": "diffprobe.train.cli:train_cmd",
    "sample": "diffprobe.train.cli:sample_cmd",
    "backbone": "diffprobe.backbones.cli:backbone_group",
    "extract": "diffprobe.features.cli:extract_cmd",
    "probe": "diffprobe.study.probe_cli:probe_cmd",
    "study": "diffprobe.study.cli:study_cmd",
    "report": "diffprobe.study.report:report",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="diffprobe")
def main() -> None:
    """diffprobe: what does a diffusion model learn from video that it does not learn from images?"""


if __name__ == "__main__":
    main()
