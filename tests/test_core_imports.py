"""The core package imports, and its CLI runs, without diffusers and transformers (they are the `hf` extra)."""

from __future__ import annotations

import subprocess
import sys

BLOCK = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("diffusers", "transformers", "accelerate"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, Refuse())
"""


def test_core_imports_without_the_hf_extra() -> None:
    code = BLOCK + """
import diffprobe.cli, diffprobe.study.run, diffprobe.study.report, diffprobe.backbones.registry, diffprobe.data
import diffprobe.features.sources, diffprobe.tasks.runner, diffprobe.train.denoiser
from click.testing import CliRunner
import pathlib, tempfile
folder = pathlib.Path(tempfile.mkdtemp())
for part in ("unet", "vae", "scheduler"):
    (folder / part).mkdir()
    (folder / part / "config.json").write_text("{}")
result = CliRunner().invoke(diffprobe.cli.main, ["backbone", "info", f"sd:{folder}"])
assert result.exit_code == 2 and "needs diffusers, which is not installed; install the hf extra" in result.output, (
    result.output, result.exception)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
