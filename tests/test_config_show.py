"""`diffprobe config show KIND`: every run config's fields, types and defaults (or a preset's values), nested configs
indented, each field with its dataclass comment; --json; unknown kinds and presets are one line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffprobe.cli import COMMANDS, main
from diffprobe.config import Config
from diffprobe.study.config_cli import CONFIGS, config_class

SRC = Path(__file__).resolve().parents[1] / "src"


def _show(*args: str) -> list[str]:
    result = CliRunner().invoke(main, ["config", "show", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output.splitlines()


def _field_lines(lines: list[str], indent: int) -> dict[str, str]:
    """``{name: line}`` of the field lines at ``indent`` levels (two spaces each)."""
    pad = "  " * indent
    return {line.strip().split(":")[0]: line for line in lines
            if line.startswith(pad) and not line.startswith(pad + " ") and ": " in line}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_every_kind_shows_every_field_with_its_type_and_default(kind) -> None:
    cls = config_class(kind)
    lines = _show(kind)
    assert lines[0].startswith(f"{kind}: {cls.__name__} ") and "defaults" in lines[0]
    fields = _field_lines(lines[2:], 1)
    assert list(fields) == [f.name for f in dataclasses.fields(cls)], kind
    defaults = cls.from_dict({})
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if isinstance(value, Config):
            assert fields[f.name].strip() == f"{f.name}: {f.type}", fields[f.name]  # its fields follow, indented
        else:
            shown = json.dumps(value, default=lambda v: v.to_dict())
            assert fields[f.name].strip().startswith(f"{f.name}: {f.type} = {shown}"), fields[f.name]


def test_a_preset_shows_its_values_nested_configs_indented_with_comments() -> None:
    lines = _show("probe", "--preset", "tiny")
    assert lines[0] == "probe: ProbeConfig (diffprobe.tasks.probe_config), preset 'tiny'; presets: base, tiny"
    assert "  steps: int = 400  # optimiser steps of every probe" in lines
    assert "  readout: ReadoutConfig" in lines
    assert "    width: int = 64" in lines  # the readout's field, one level in
    assert "    learning_rates: tuple[float, ...] = [0.002]" in lines
    train = _show("train")
    # a '#:' comment of two lines above the field, joined; a trailing one after the value
    assert any(line.startswith('  data_workers: int | Literal[\'auto\'] = "auto"  # processes preparing batches')
               and line.endswith("must then build host tensors") for line in train)
    assert "  lr: float = 0.0003  # peak learning rate, reached at the end of warm-up" in train
    study = _show("study", "--preset", "tiny")
    assert "      steps: int = 300  # total optimizer steps of the run" in study  # study > tokenizer > train


def test_json_is_the_presets_full_config() -> None:
    from diffprobe.study.config import StudyConfig

    result = CliRunner().invoke(main, ["config", "show", "study", "--preset", "tiny", "--json"])
    assert result.exit_code == 0 and StudyConfig.from_dict(json.loads(result.output)) == StudyConfig.preset("tiny")
    result = CliRunner().invoke(main, ["config", "show", "world", "--json"])
    assert json.loads(result.output) == config_class("world")().to_dict()


def test_an_unknown_kind_or_preset_is_one_line_listing_the_known_ones() -> None:
    for args, expected in [(["nope"], "Error: unknown config kind 'nope'; known kinds are " + ", ".join(CONFIGS)),
                           (["probe", "--preset", "huge"],
                            "Error: ProbeConfig: unknown preset 'huge'; known presets are ['base', 'tiny']")]:
        result = CliRunner().invoke(main, ["config", "show", *args])
        assert result.exit_code == 2 and result.output.strip() == expected, result.output


def test_it_runs_from_another_folder_and_nothing_in_the_package_imports_it(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-m", "diffprobe.cli", "config", "show", "probe"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "  steps: int = 500  # optimiser steps of every probe" in out.stdout, out.stderr
    assert COMMANDS["config"] == "diffprobe.study.config_cli:config_group"
    entry = {SRC / "diffprobe" / "cli.py", SRC / "diffprobe" / "study" / "config_cli.py"}
    users = [p for p in (SRC / "diffprobe").rglob("*.py") if "config_cli" in p.read_text() and p not in entry]
    assert users == [] and "config_cli" not in (SRC / "diffprobe" / "cli.py").read_text().replace(
        '"diffprobe.study.config_cli:config_group"', "")
    code = "import sys, diffprobe.study.config_cli; assert 'torch' not in sys.modules, 'the CLI module imports torch'"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60).returncode == 0
