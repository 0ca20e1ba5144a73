"""Kill anywhere: the real ``diffprobe study`` (a miniature config) is SIGKILLed inside a stage, run again, and its
results equal an uninterrupted run's, with no finished work redone. The probing stage is in the default run; the
tokenizer, twin training, extraction and report stages are ``-m slow``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_study import MINI

SETS = [*MINI, "tokenizer.train.steps=12", "tokenizer.train.ckpt_every=3", "twin.train.steps=6",
        "twin.train.keep_steps=[2]"]


def _command(run: Path, report: bool = True) -> list[str]:
    args = [sys.executable, "-m", "diffprobe.cli", "study", "--quiet", "--out", str(run)]
    for s in SETS:
        args += ["--set", s]
    return args + ([] if report else ["--no-report"])


def _rows(run: Path) -> list[tuple]:
    """Every stored result, without its time stamp."""
    with sqlite3.connect(run / "results.sqlite") as db:
        cols = [r[1] for r in db.execute("PRAGMA table_info(results)")]
        keep = [c for c in cols if c != "time"]
        return sorted(db.execute(f"SELECT {', '.join(keep)} FROM results").fetchall(), key=repr)


def _stamps(run: Path) -> dict[tuple, str]:
    """Every stored row's time stamp, by its whole key (cell and metric)."""
    with sqlite3.connect(run / "results.sqlite", timeout=1.0) as db:
        cols = [r[1] for r in db.execute("PRAGMA table_info(results)") if r[1] not in ("value", "time")]
        return {tuple(r[:-1]): r[-1] for r in db.execute(f"SELECT {', '.join(cols)}, time FROM results")}


def _count_rows(run: Path) -> int:
    try:
        with sqlite3.connect(run / "results.sqlite", timeout=0.01) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:  # not created yet, or locked by the study's write: not there yet
        return 0


#: stage -> a test of the run directory that is true once the stage is under way (and not finished)
STAGES: dict[str, Callable[[Path], bool]] = {
    "tokenizer": lambda r: any((r / "tokenizer" / "ckpt").glob("step-*"))
    and not (r / "tokenizer" / "model.json").exists(),
    "twin": lambda r: any((r / "twins" / "main-video" / "ckpt").glob("step-*"))
    and not (r / "twins" / "main-video" / "model.json").exists(),
    "extraction": lambda r: any((r / "cache").glob("walt-video-*/*/*/*/*/shard-*.safetensors")),
    "probing": lambda r: _count_rows(r) >= 8,
    "report": lambda r: any((r / "report").glob("fig_*.png")) and not (r / "report" / "report.html").exists(),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(_command(run), check=True, capture_output=True, timeout=900)
    return run


def _kill_inside(stage: str, run: Path) -> None:
    proc = subprocess.Popen(_command(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if STAGES[stage](run):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                return
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
    pytest.fail(f"the study finished before the {stage} stage was seen running (exit {proc.returncode})")


def _killed_and_resumed(stage: str, reference: Path, tmp_path: Path) -> tuple[Path, dict, dict]:
    run = tmp_path / "run"
    _kill_inside(stage, run)
    timings = json.loads((run / "timings.json").read_text()) if (run / "timings.json").exists() else {}
    stamps = _stamps(run) if (run / "results.sqlite").exists() else {}
    subprocess.run(_command(run), check=True, capture_output=True, timeout=900)
    assert _rows(run) == _rows(reference)  # the same numbers as a run that was never killed
    assert (run / "report" / "report.html").is_file()
    return run, timings, stamps


def _check_nothing_redone(run: Path, timings: dict, stamps: dict) -> None:
    after = json.loads((run / "timings.json").read_text())
    for stage in ("tokenizer", "twin main-video", "twin main-image", "feature net"):
        if stage in timings:  # finished before the kill: not run again (its time did not grow)
            assert after[stage] == timings[stage], stage
    now = _stamps(run)
    assert all(now[k] == v for k, v in stamps.items())  # cells stored before the kill were not recomputed


def test_killed_while_probing_resumes_to_the_same_results(reference, tmp_path) -> None:
    run, timings, stamps = _killed_and_resumed("probing", reference, tmp_path)
    assert stamps and {"tokenizer", "twin main-video", "twin main-image"} <= set(timings)
    _check_nothing_redone(run, timings, stamps)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["tokenizer", "twin", "extraction", "report"])
def test_killed_inside_each_stage_resumes_to_the_same_results(reference, stage, tmp_path) -> None:
    run, timings, stamps = _killed_and_resumed(stage, reference, tmp_path)
    _check_nothing_redone(run, timings, stamps)
