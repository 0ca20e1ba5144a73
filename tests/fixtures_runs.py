"""Finished tiny runs for tests that need a real one (a tokenizer, a video twin of 6 blocks, a results store), built
once per test session with two training steps each. Import with ``from fixtures_runs import tiny_runs`` (pytest puts
``tests/`` on ``sys.path``) and call it with a session folder: ``tiny_runs(tmp_path_factory.getbasetemp())``."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from diffprobe.cli import main

#: 8 / 4 / 4 clips of 9 x 32 x 32 (what the tiny tokenizer takes) with 4 tracks: every command on it is quick
WORLD = "probeworld:tiny@train_size=8,val_size=4,test_size=4,num_tracks=4"
#: overrides that make a training run take two steps
TWO_STEPS = ["--set", "train.steps=2", "--set", "train.tensorboard=false"]
#: a probe of a few steps on a narrow readout
PROBE = ["--set", "steps=2", "--set", "batch_size=2", "--set", "eval_batch_size=4", "--set", "readout.width=16",
         "--set", "readout.heads=2", "--set", "warmup_steps=1", "--set", "eval_every=0"]


@dataclass(frozen=True)
class TinyRuns:
    tokenizer: Path  #: a finished tokenizer run
    video: Path  #: a finished video twin of that tokenizer (WALT depth 6: blocks 0..6)
    cache: Path  #: the feature cache they were trained with
    report: Path  #: a folder with a results store of one probe cell (block 1, t 0), ready for `diffprobe report`
    depth: int = 6


def _ok(args: list[str]) -> None:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


@functools.cache
def tiny_runs(root: Path) -> TinyRuns:
    """The runs under ``root/tiny-runs`` (built on the first call of a session)."""
    from diffprobe.study.store import Cell, ResultsStore

    base = root / "tiny-runs"
    runs = TinyRuns(base / "tok", base / "video", base / "cache", base / "report")
    _ok(["train-tokenizer", "--out", str(runs.tokenizer), "--dataset", WORLD, "--cache", str(runs.cache), "--quiet",
         *TWO_STEPS, "--set", "stats_clips=4"])
    _ok(["train", "--mode", "video", "--tokenizer", str(runs.tokenizer), "--out", str(runs.video), "--dataset", WORLD,
         "--cache", str(runs.cache), "--quiet", *TWO_STEPS, "--set", "train.batch_size=2"])
    cell = Cell("adhoc", f"walt:{runs.video}", "walt-video-tiny", "video", 2, 1, 0.0, 0, 1, "action", "d", "all", 0,
                "h")
    runs.report.mkdir()
    with ResultsStore(runs.report / "results.sqlite") as store:
        store.add(cell, {"top1": 0.5, "top1_se": 0.2, "cross_entropy": 1.0}, np.array([1.0, 0.0, 1.0, 0.0]))
    return runs
