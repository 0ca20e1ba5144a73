"""The ``diffprobe`` command line.

Each pipeline stage owns its commands in its own module; this group only maps command names to them and
imports a stage's module when its command is run, so ``diffprobe --help`` stays fast.

Errors: a :class:`~diffprobe.errors.DiffprobeError` (a bad config, spec, path or file) is printed as one line
``Error: <message>`` on stderr with exit status 2; ``--debug`` (or ``DIFFPROBE_DEBUG=1``) shows its traceback instead.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os

import click

from diffprobe.errors import DiffprobeError
from diffprobe.utils.imports import import_target

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
    "match": "diffprobe.study.match_cli:match_cmd",
    "motion": "diffprobe.study.motion_cli:motion_cmd",
    "study": "diffprobe.study.cli:study_cmd",
    "report": "diffprobe.study.report:report",
    "config": "diffprobe.study.config_cli:config_group",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return import_target(COMMANDS[name])

    def invoke(self, ctx: click.Context) -> object:
        """Run the command; diffprobe's own errors become one line on stderr and exit status 2."""
        try:
            return super().invoke(ctx)
        except DiffprobeError as e:
            if ctx.meta.get("diffprobe.debug") or os.environ.get("DIFFPROBE_DEBUG") == "1":
                raise
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="diffprobe")
@click.option("--debug", is_flag=True, help="Show the traceback of errors (also DIFFPROBE_DEBUG=1).")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """diffprobe: what does a diffusion model learn from video that it does not learn from images?"""
    ctx.meta["diffprobe.debug"] = debug


if __name__ == "__main__":
    main()
