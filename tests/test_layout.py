"""The package layout DESIGN.md states: imports run one way along the pipeline, and modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "diffprobe"
#: lowest first (DESIGN.md); a module imports only its own layer or a lower one
LAYERS = [{"utils", "config", "errors", "spec"}, {"metrics"}, {"data"}, {"models"}, {"diffusion"}, {"backbones"},
          {"features"}, {"train"}, {"readouts"}, {"tasks"}, {"study"}, {"cli", "__init__", "__main__"}]


def _layer(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part in names)


def _part(path: Path) -> str:
    rel = path.relative_to(SRC)
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
