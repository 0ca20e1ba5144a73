"""``diffprobe config show KIND [--preset NAME] [--json]``: the fields, types and defaults (or a preset's values) of
a run's config, nested configs indented, each field with the comment its dataclass gives it.

A command-line entry module like ``study/cli.py`` (in ``study``, the top of the pipeline, since it reads every
stage's config): nothing in the package imports it, and each config class is imported only when it is shown
(``diffprobe --help`` stays fast).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import textwrap
import tokenize
import typing
from typing import Any

import click

from diffprobe.errors import InputError
from diffprobe.utils.imports import import_target

#: config kind -> "module:Class" of its dataclass (a run's config, then the configs nested in them)
CONFIGS: dict[str, str] = {
    "world": "diffprobe.data.world.config:ProbeWorldConfig",
    "tokenizer": "diffprobe.train.runs:TokenizerRunConfig",
    "denoiser": "diffprobe.train.runs:DenoiserRunConfig",
    "feature-net": "diffprobe.train.runs:FeatureNetRunConfig",
    "probe": "diffprobe.tasks.probe_config:ProbeConfig",
    "study": "diffprobe.study.config:StudyConfig",
    "train": "diffprobe.train.config:TrainConfig",
    "autoencoder": "diffprobe.models.autoencoder:CausalAutoencoderConfig",
    "walt": "diffprobe.models.walt:WALTConfig",
    "readout": "diffprobe.readouts.config:ReadoutConfig",
}


def config_class(kind: str) -> type:
    """The config dataclass of ``kind``; an unknown kind is an error listing the known ones."""
    if kind not in CONFIGS:
        raise InputError(f"unknown config kind {kind!r}; known kinds are {', '.join(CONFIGS)}")
    return import_target(CONFIGS[kind])


def _comment_text(token: str) -> str:
    return token.lstrip("#").lstrip(":").strip()


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the class's source (and its bases'): the ``#:`` lines just above a field, else the
    comment at the end of its line. Empty where the source cannot be read."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        comments: dict[int, str] = {}  # line -> comment token
        code_lines: set[int] = set()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                code_lines.add(tok.start[0])
        body = ast.parse(source).body[0]
        for node in getattr(body, "body", []):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            above, line = [], node.lineno - 1
            while line in comments and line not in code_lines and comments[line].startswith("#:"):
                above.insert(0, _comment_text(comments[line]))
                line -= 1
            trailing = comments.get(node.end_lineno or node.lineno)
            text = " ".join(above) or (_comment_text(trailing) if trailing else "")
            if text:
                out[node.target.id] = text
    return out


def _value(value: Any) -> str:
    """A field's value as JSON (as ``--set`` and ``config.json`` spell it; nested configs as their dicts)."""
    return json.dumps(value, default=lambda v: v.to_dict())


def _type_text(field: dataclasses.Field) -> str:
    """The field's annotation as its source spells it."""
    return field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))


def describe(cls: type, config: Any | None, indent: int = 1) -> list[str]:
    """One line per field of ``cls`` (``name: type = value  # comment``), the fields of nested configs indented
    under theirs; values from ``config``, or the dataclass defaults when it is None."""
    from diffprobe.config import Config

    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    lines = []
    pad = "  " * indent
    for field in dataclasses.fields(cls):
        if config is not None:
            value = getattr(config, field.name)
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = dataclasses.MISSING
        note = f"  # {comments[field.name]}" if field.name in comments else ""
        tp = hints[field.name]
        if isinstance(tp, type) and issubclass(tp, Config) and isinstance(value, Config):
            lines.append(f"{pad}{field.name}: {_type_text(field)}{note}")
            lines += describe(tp, value, indent + 1)
            continue
        shown = "(required)" if value is dataclasses.MISSING else _value(value)
        lines.append(f"{pad}{field.name}: {_type_text(field)} = {shown}{note}")
    return lines


@click.group("config")
def config_group() -> None:
    """Show the fields of a run's config (what --set and config.json take)."""


@config_group.command("show", help="Print the fields, types and defaults (or --preset's values) of the config of "
                      f"KIND, one line a field with its comment, nested configs indented. KIND: {', '.join(CONFIGS)}.")
@click.argument("kind", metavar="KIND")
@click.option("--preset", default=None, help="Show this preset's values instead of the dataclass defaults.")
@click.option("--json", "as_json", is_flag=True, help="Print the config (the preset's, or the defaults) as JSON.")
def show_cmd(kind: str, preset: str | None, as_json: bool) -> None:
    """``diffprobe config show``: see the command's help."""
    cls = config_class(kind)
    config = cls.preset(preset) if preset is not None else None
    if as_json:
        click.echo((config if config is not None else cls.from_dict({})).to_json())
        return
    summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    presets = ", ".join(sorted(cls.PRESETS)) or "none"
    what = f"preset {preset!r}" if preset is not None else "defaults"
    click.echo(f"{kind}: {cls.__name__} ({cls.__module__}), {what}; presets: {presets}")
    if summary:
        click.echo(f"  {summary}")
    for line in describe(cls, config):
        click.echo(line)
    click.echo("(commands take --set NAME=VALUE, a nested field as PARENT.NAME=VALUE; values are JSON)")
