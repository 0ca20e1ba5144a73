"""Every option and argument of every `diffprobe` command, given a value of the wrong type, an out-of-range value or a
missing file, is refused with exit status 2 and no traceback, before any work starts.

The cases are generated from the click definitions (``click.Command.params`` and their types), so a new option is
covered without a new test: numbers get a non-number and values outside their declared range (``IntRange`` /
``FloatRange``; an undeclared range is taken as ">= 0", as for every count, size, seed and noise level of the CLI),
choices a non-choice, paths a path of the wrong kind and a missing one (where the command reads it), specs one that
names a missing path. Each case changes one parameter of otherwise valid arguments (``BASE``) on tiny finished runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from fixtures_runs import PROBE, TWO_STEPS, WORLD, tiny_runs

from diffprobe.cli import main

#: parameters that take any text (a name to file results under), so no value is of the wrong type
FREE_TEXT = {("probe", "study"), ("probe", "name"), ("match", "study"), ("match", "name")}
#: path parameters a command creates when missing (its outputs); every other path must exist
CREATED = {"out_dir", "cache_dir", "store"}
#: out-of-range values beyond the declared range, by parameter name: a block far past the model's (depth 6), a
#: noise level past 1000
BEYOND = {"block": "1000", "blocks": "1000", "t": "1001", "ts": "1001"}


def commands() -> Iterator[tuple[str, click.Command]]:
    """``(path, command)`` of every command, the sub-commands of groups (``data info``, ``config show``) included."""
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                yield f"{name} {sub}", cmd.get_command(ctx, sub)
        else:
            yield name, cmd


def _is_dataset_spec(path: str, param: click.Parameter) -> bool:
    return getattr(param, "metavar", None) == "SPEC" or (path.startswith("data ") and param.name == "spec")


def _range_values(tp: click.ParamType, number: type) -> list[str]:
    """Values just outside the declared range of an ``IntRange`` / ``FloatRange``, or -1 where none is declared."""
    if not isinstance(tp, click.types._NumberRangeBase):
        return ["-1"]
    step = 1 if number is int else 1e-3
    out = []
    if tp.min is not None:
        out.append(str(tp.min - (0 if tp.min_open else step)))
    if tp.max is not None:
        out.append(str(tp.max + (0 if tp.max_open else step)))
    return out


def cases(path: str, param: click.Parameter) -> Iterator[tuple[str, str]]:
    """``(case, value)`` of every bad value for one parameter (``{missing}`` / ``{file}`` / ``{dir}`` are filled in
    per test)."""
    if getattr(param, "is_flag", False) or param.name == "help":
        return
    tp = param.type
    if isinstance(tp, (click.types.IntParamType, click.types.FloatParamType)):
        number = int if isinstance(tp, click.types.IntParamType) else float
        yield "wrong type", "notanumber"
        for value in _range_values(tp, number):
            yield f"out of range {value}", value
        if param.name in BEYOND:
            yield f"out of range {BEYOND[param.name]}", BEYOND[param.name]
    elif isinstance(tp, click.Choice):
        yield "wrong type", "no-such-choice"
    elif isinstance(tp, click.Path):
        if not tp.file_okay:
            yield "wrong type", "{file}"
        elif not tp.dir_okay:
            yield "wrong type", "{dir}"
        if param.name not in CREATED:
            yield "missing file", "{missing}"
    elif isinstance(tp, click.types.StringParamType):
        if (path, param.name) not in FREE_TEXT:
            yield "wrong type", "@@no such thing@@"
        if param.name == "spec" or param.metavar == "SPEC":
            yield "missing file", ("videos:{missing}" if _is_dataset_spec(path, param) else "walt:{missing}")


def _base(root: Path, tmp: Path) -> dict[str, dict[str, object]]:
    """Valid arguments of each command, by parameter name (a list for a repeatable option, True for a flag), on the
    session's tiny runs under ``root``, writing under ``tmp``."""
    runs = tiny_runs(root)
    out, cache, video = tmp / "out", str(runs.cache), f"walt:{runs.video}"
    sets = [v for v in TWO_STEPS if v != "--set"]
    return {
        "world": {"out_dir": out, "num": "1", "num_preview": "0", "assignments": ["train_size=2"]},
        "data info": {"spec": WORLD},
        "data preview": {"spec": WORLD, "out_dir": out, "num": "1"},
        "train-tokenizer": {"out_dir": out, "dataset": WORLD, "cache_dir": cache, "quiet": True,
                            "assignments": [*sets, "stats_clips=2"]},
        "train": {"mode": "video", "tokenizer_dir": runs.tokenizer, "out_dir": out, "dataset": WORLD,
                  "cache_dir": cache, "quiet": True, "assignments": [*sets, "train.batch_size=2"]},
        "sample": {"run_dir": runs.video, "num": "1", "steps": "1", "out_dir": out, "quiet": True},
        "backbone check": {"spec": video, "dataset": WORLD, "clips": "1", "steps": "1", "ts": ["100"]},
        "backbone info": {"spec": video},
        "extract": {"spec": video, "dataset": WORLD, "blocks": ["1"], "cache_dir": cache, "quiet": True,
                    "splits": ["test"]},
        "probe": {"task_name": "action", "spec": video, "dataset": WORLD, "block": "1", "store": tmp / "r.sqlite",
                  "cache_dir": cache, "quiet": True, "assignments": [v for v in PROBE if v != "--set"]},
        "match": {"spec": video, "dataset": WORLD, "blocks": ["1"], "store": tmp / "m.sqlite", "cache_dir": cache,
                  "quiet": True},
        "motion": {"spec": video, "dataset": WORLD, "block": "1", "n_clips": "1", "out_dir": out},
        "study": {"out_dir": out, "estimate": True, "peak_tflops": "100", "quiet": True},
        "report": {"run_dir": runs.report, "block": "1", "t": "0"},
        "config show": {"kind": "probe"},
    }


def argv(path: str, cmd: click.Command, values: dict[str, object]) -> list[str]:
    """The command line of ``path`` with ``values`` (parameter name -> value, list or True)."""
    args, positional = path.split(), []
    for param in cmd.params:
        if param.name not in values:
            continue
        value = values[param.name]
        if isinstance(param, click.Argument):
            positional.append(str(value))
        elif value is True:
            args.append(param.opts[0])
        else:
            for v in value if isinstance(value, list) else [value]:
                args += [param.opts[0], str(v)]
    return args + positional


ALL = [(path, param.name, case, value) for path, cmd in commands() for param in cmd.params
       for case, value in cases(path, param)]
CASES = ALL


def test_every_command_has_base_arguments_and_cases(tmp_path_factory, tmp_path) -> None:
    base = _base(tmp_path_factory.getbasetemp(), tmp_path)
    assert sorted(base) == sorted(path for path, _ in commands())
    assert len(ALL) > 100
    kinds = {case.split(" ")[0] for _, _, case, _ in ALL}
    assert kinds == {"wrong", "out", "missing"}


@pytest.mark.parametrize(("path", "name", "case", "value"), CASES, ids=[f"{p}:{n}:{c}" for p, n, c, _ in CASES])
def test_a_bad_value_is_refused_with_exit_2(tmp_path_factory, tmp_path, path, name, case, value) -> None:
    root = tmp_path_factory.getbasetemp()
    cmd = dict(commands())[path]
    param = next(p for p in cmd.params if p.name == name)
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "a-folder").mkdir()
    missing = tmp_path / "missing" / "x"
    bad = value.format(missing=missing, file=tmp_path / "a-file", dir=tmp_path / "a-folder")
    values = {**_base(root, tmp_path)[path], name: [bad] if getattr(param, "multiple", False) else bad}
    args = argv(path, cmd, values)
    result = CliRunner().invoke(main, args)
    where = f"{' '.join(args)}\n{result.output}"
    assert result.exit_code == 2, where
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, where
    named = [*getattr(param, "opts", []), param.human_readable_name, param.name, bad, str(missing)]
    assert any(n and n in result.output for n in named), f"the error names neither the option nor the value: {where}"
