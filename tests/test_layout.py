"""The package layout DESIGN.md states: imports run one way along the pipeline, and modules stay small."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "diffprobe"
#: lowest first (DESIGN.md); a module imports only its own layer or a lower one
LAYERS = [{"utils", "config", "errors", "spec"}, {"metrics"}, {"data"}, {"models"}, {"diffusion"}, {"backbones"},
          {"features"}, {"train"}, {"readouts"}, {"tasks"}, {"study"}, {"cli", "__init__", "__main__"}]


def _layer(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part in names)


#: a stage's command-line module is an entry point: it sits above every stage, as the top-level cli does
ENTRY_POINTS = ("cli.py", "probe_cli.py", "config_cli.py")


def _part(path: Path) -> str:
    rel = path.relative_to(SRC)
    if rel.name in ENTRY_POINTS:
        return "cli"
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diffprobe."):
            out.append((node.lineno, node.module.split(".")[1]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("diffprobe.")]
    return out


MODULES = sorted(SRC.rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    assert {_part(p) for p in MODULES} <= set().union(*LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_run_down_the_pipeline(path: Path) -> None:
    own = _layer(_part(path))
    upward = [f"line {line}: diffprobe.{part}" for line, part in _imports(path) if _layer(part) > own]
    assert not upward, f"{path.relative_to(SRC)} imports a later stage: {upward}"


def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 400}
    assert not long


#: what drawing a report or estimating a study must not import: the trainers and the study's stages
TRAINERS = ("diffprobe.study.run", "diffprobe.train.loop", "diffprobe.train.tokenizer", "diffprobe.train.denoiser",
            "diffprobe.train.feature_net", "diffprobe.tasks.probing", "diffprobe.tasks.runner")


def _loaded_after(modules: str) -> str:
    """Which of :data:`TRAINERS` a fresh interpreter holds after importing ``modules`` (this checkout's package)."""
    code = f"import sys, {modules}; print([m for m in {TRAINERS!r} if m in sys.modules])"
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                          timeout=120).stdout.strip()


def test_the_report_and_the_estimate_import_no_trainer() -> None:
    assert _loaded_after("diffprobe.study.report, diffprobe.study.estimate, diffprobe.study.tables") == "[]"
    assert _loaded_after("diffprobe.study.run") != "[]"  # the check can fail: the study's stages do import them
