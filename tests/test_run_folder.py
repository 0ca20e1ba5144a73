"""A run folder is the user's data: resume continues the run on disk, one writer per folder, paths relative to the
run so a moved folder still loads, data follows the tokenizer, and a size change is asked for, never silent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffprobe.cli import main
from diffprobe.config import ConfigError
from diffprobe.features.cache import FeatureCache
from diffprobe.train.tokenizer import TokenizerRunConfig, train_tokenizer
from diffprobe.utils.lock import LOCK_FILE, FolderLocked, folder_lock

WORLD = "probeworld:tiny@train_size=32,val_size=8,test_size=8,num_tracks=8"
FAST = ["--set", "stats_clips=16", "--set", "train.tensorboard=false", "--quiet"]
TWIN = ["--set", "train.batch_size=4", "--set", "train.tensorboard=false", "--quiet"]


def _run(args: list[str], code: int = 0) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, (args, result.output, result.exception)
    assert "Traceback" not in result.output
    return result.output


def _snapshot(folder) -> dict[str, bytes]:
    """Every file under a folder (the lock aside), path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished 4-step tokenizer run and a 2-step video twin, made with the CLI from their parent folder."""
    root = tmp_path_factory.mktemp("runs")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        _run(["train-tokenizer", "--out", "runs/tok", "--dataset", WORLD, "--set", "train.steps=4", "--cache",
              "cache", *FAST])
        _run(["train", "--mode", "video", "--tokenizer", "runs/tok", "--out", "runs/video", "--set",
              "train.steps=2", "--cache", "cache", *TWIN])
    finally:
        os.chdir(cwd)
    return root


def test_resume_refuses_other_options_and_changes_nothing(runs, tmp_path, monkeypatch) -> None:
    work = tmp_path / "w"
    shutil.copytree(runs / "runs", work / "runs")
    monkeypatch.chdir(work)
    before = _snapshot(work / "runs/tok")
    out = _run(["train-tokenizer", "--out", "runs/tok", "--resume", "--dataset", "probeworld:tiny", "--cache",
                "cache", "--quiet"], code=2)
    assert "differ from it: dataset" in out and WORLD in out
    out = _run(["train-tokenizer", "--out", "runs/tok", "--resume", "--set", "train.seed=1", "--cache", "cache",
                "--quiet"], code=2)
    assert "train.seed 0 -> 1" in out
    # the preset's 300 steps are not taken over a finished 4-step run (the data-loss case of issue #22)
    out = _run(["train-tokenizer", "--out", "runs/tok", "--resume", "--preset", "tiny", "--cache", "cache",
                "--quiet"], code=2)
    assert "differ from it" in out
    out = _run(["train-tokenizer", "--out", "runs/tok", "--resume", "--set", "train.steps=6", "--cache", "cache",
                "--quiet"], code=2)
    assert "finished at step 4" in out and "--force" in out
    out = _run(["train-tokenizer", "--out", "runs/tok", "--set", "train.steps=4", "--cache", "cache", "--quiet"],
               code=2)
    assert "holds a run already" in out
    assert _snapshot(work / "runs/tok") == before  # nothing written by any of them
    # the same run resumed as it was started: finished, nothing rewritten
    _run(["train-tokenizer", "--out", "runs/tok", "--resume", "--cache", "cache", "--quiet"])
    assert _snapshot(work / "runs/tok") == before
    _run(["train-tokenizer", "--out", "runs/none", "--resume", "--cache", "cache", "--quiet"], code=2)


def test_continuing_a_finished_run_moves_its_export_aside_and_records_the_change(runs, tmp_path,
                                                                                 monkeypatch) -> None:
    work = tmp_path / "w"
    shutil.copytree(runs / "runs", work / "runs")
    monkeypatch.chdir(work)
    tok = work / "runs/tok"
    old_model, old_meta = (tok / "model.safetensors").read_bytes(), (tok / "model.json").read_bytes()
    _run(["train-tokenizer", "--out", "runs/tok", "--resume", "--set", "train.steps=6", "--force", "--cache",
          "cache", "--quiet"])
    (aside,) = (tok / "previous").iterdir()
    assert (aside / "model.safetensors").read_bytes() == old_model and (aside / "model.json").read_bytes() == old_meta
    assert json.loads((tok / "model.json").read_text())["step"] == 6
    assert (tok / "ckpt/step-00000004").is_dir() and (tok / "ckpt/step-00000006").is_dir()  # the finished step kept
    (change,) = json.loads((tok / "changes.json").read_text())
    assert change["changes"]["train.steps"] == {"old": 4, "new": 6}
    saved = json.loads((tok / "config.json").read_text())
    assert saved["train"]["steps"] == 6 and saved["dataset"] == WORLD


def test_force_starts_over_after_moving_the_run_aside(runs, tmp_path, monkeypatch) -> None:
    work = tmp_path / "w"
    shutil.copytree(runs / "runs", work / "runs")
    monkeypatch.chdir(work)
    before = _snapshot(work / "runs/tok")
    _run(["train-tokenizer", "--out", "runs/tok", "--dataset", WORLD, "--set", "train.steps=2", "--set",
          "train.seed=5", "--force", "--cache", "cache", *FAST])
    (aside,) = (work / "runs/tok/previous").iterdir()
    assert _snapshot(aside) == before
    assert json.loads((work / "runs/tok/config.json").read_text())["train"]["seed"] == 5


def test_twin_defaults_to_the_tokenizers_data_and_records_paths_relative_to_itself(runs) -> None:
    saved = json.loads((runs / "runs/video/config.json").read_text())
    assert saved["dataset"] == WORLD  # the tokenizer's data, not the preset's probeworld:tiny
    assert saved["tokenizer"] == "../tok"


def test_a_moved_run_folder_loads_from_anywhere_and_a_missing_tokenizer_is_named(runs, tmp_path,
                                                                                 monkeypatch) -> None:
    moved = tmp_path / "elsewhere/project"
    shutil.copytree(runs / "runs", moved)
    monkeypatch.chdir(tmp_path)
    assert "identity  walt-video-" in _run(["backbone", "info", f"walt:{moved / 'video'}"])
    shutil.rmtree(moved / "tok")
    out = _run(["backbone", "info", f"walt:{moved / 'video'}"], code=2)
    assert "its tokenizer run '../tok' is not at" in out and str(moved / "tok") in out


def test_legacy_runs_with_working_directory_paths_still_load(runs, tmp_path, monkeypatch) -> None:
    work = tmp_path / "w"
    shutil.copytree(runs / "runs", work / "runs")
    meta_path = work / "runs/video/model.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["tokenizer"] = "runs/tok"  # as runs before issue #22 recorded it
    meta_path.write_text(json.dumps(meta))
    monkeypatch.chdir(work)
    assert "identity  walt-video-" in _run(["backbone", "info", "walt:runs/video"])


def test_a_clip_size_other_than_the_trained_one_must_be_asked_for(runs, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(runs)
    other = WORLD.replace("@", "@height=64,width=64,")
    out = _run(["train", "--mode", "image", "--tokenizer", "runs/tok", "--out", str(tmp_path / "img"), "--dataset",
                other, "--set", "train.steps=2", "--cache", "cache", *TWIN], code=2)
    assert "64x64 px" in out and "32x32 px" in out and "--allow-size-change" in out
    assert not (tmp_path / "img/config.json").exists()
    out = _run(["extract", "--backbone", "walt:runs/video", "--block", "1", "--dataset", other, "--cache",
                str(tmp_path / "c"), "--quiet"], code=2)
    assert "the backbone walt:runs/video was trained on 32x32 px" in out
    out = _run(["probe", "--task", "action", "--backbone", "walt:runs/video", "--block", "1", "--dataset", other,
                "--cache", str(tmp_path / "c"), "--store", str(tmp_path / "r.sqlite"), "--quiet"], code=2)
    assert "--allow-size-change" in out and not (tmp_path / "r.sqlite").exists()


def test_one_writer_per_folder(runs, tmp_path, monkeypatch) -> None:
    work = tmp_path / "w"
    shutil.copytree(runs / "runs", work / "runs")
    monkeypatch.chdir(work)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = work / "runs/tok" / LOCK_FILE
        lock.write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "time": 0,
                                    "command": "diffprobe train-tokenizer --out runs/tok"}))
        before = _snapshot(work / "runs/tok")
        out = _run(["train-tokenizer", "--out", "runs/tok", "--resume", "--set", "train.steps=6", "--force",
                    "--cache", "cache", "--quiet"], code=2)
        assert f"in use by pid {holder.pid}" in out and "diffprobe train-tokenizer --out runs/tok" in out
        assert _snapshot(work / "runs/tok") == before and lock.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is taken over with a message, and released at the end
    result = CliRunner().invoke(main, ["train-tokenizer", "--out", "runs/tok", "--resume", "--cache", "cache",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert "taking over the lock of a run that is no longer running" in result.output
    assert not lock.exists()


def test_two_library_runs_into_one_folder(tmp_path) -> None:
    """Without the CLI: a second config trained into a folder holding a run is refused before anything is
    written, and a held lock refuses a second holder in another process."""
    cache = FeatureCache(tmp_path / "cache")
    cfg = TokenizerRunConfig.preset("tiny").override([f"dataset={WORLD}", "train.steps=2", "stats_clips=8",
                                                      "train.tensorboard=false"])
    train_tokenizer(cfg, tmp_path / "tok", cache, progress=False)
    before = _snapshot(tmp_path / "tok")
    with pytest.raises(ConfigError, match=r"train.seed 0 -> 1"):
        train_tokenizer(cfg.override(["train.seed=1"]), tmp_path / "tok", cache, progress=False)
    assert _snapshot(tmp_path / "tok") == before
    code = ("import sys; from diffprobe.utils.lock import folder_lock, FolderLocked\n"
            "try:\n    folder_lock(sys.argv[1]).__enter__()\nexcept FolderLocked as e:\n    print(e); sys.exit(3)")
    with folder_lock(tmp_path / "tok"):
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tok")], capture_output=True, text=True)
        assert other.returncode == 3 and f"in use by pid {os.getpid()}" in other.stdout
        with folder_lock(tmp_path / "tok"):  # re-entrant in one process
            pass
        assert (tmp_path / "tok" / LOCK_FILE).exists()
    assert not (tmp_path / "tok" / LOCK_FILE).exists()
    assert issubclass(FolderLocked, Exception)


def test_shortened_runs_scale_their_warmup_and_an_impossible_one_is_named() -> None:
    cfg = TokenizerRunConfig.preset("tiny").override(["train.steps=60"])
    assert (cfg.train.steps, cfg.train.warmup_steps) == (60, 6)  # the preset's 30 of 300
    kept = TokenizerRunConfig.preset("tiny").override(["train.steps=60"], scale_schedule=False)
    assert kept.train.warmup_steps == 30
    with pytest.raises(ConfigError, match=r"warmup_steps: 90 exceeds steps=60"):
        TokenizerRunConfig.preset("tiny").override(["train.steps=60", "train.warmup_steps=90"])


def test_training_reports_skipped_clips_into_its_run_folder(tmp_path, monkeypatch) -> None:
    """A broken file under on_bad=skip is named at the end of train-tokenizer and listed in the run's own
    skipped.json, never in the working directory."""
    from fixtures_video import real_frames, truncate, write_video

    for i, source in enumerate(("bikes.mp4", "carphone_pristine.mp4")):
        write_video(tmp_path / "clips" / f"v{i}.mp4", real_frames(source, count=20, hw=(32, 32)))
    truncate(write_video(tmp_path / "clips" / "broken.mp4", real_frames("bikes.mp4", count=20, hw=(32, 32))))
    monkeypatch.chdir(tmp_path)
    spec = "videos:clips@frames=9,stride=1,size=32,windows=all,on_bad=skip"
    out = _run(["train-tokenizer", "--out", "runs/tok", "--dataset", spec, "--set", "train.steps=2",
                "--set", "train.batch_size=2", "--cache", "cache", *FAST])
    assert "broken.mp4" in out and "skipped" in out
    listed = json.loads((tmp_path / "runs/tok/skipped.json").read_text())
    (records,) = [r for splits in listed.values() for r in splits.values()]
    assert [Path(r["source"]).name for r in records] == ["broken.mp4"]
    assert not (tmp_path / "skipped.json").exists()


def test_probes_on_two_datasets_are_two_report_cells(tmp_path_factory, tmp_path, monkeypatch) -> None:
    """Two `diffprobe probe` results on different data are two report cells, each named by its spec (n=1 each);
    before issue #22 the report pooled them as replicates."""
    from fixtures_runs import PROBE, tiny_runs

    runs = tiny_runs(tmp_path_factory.getbasetemp())
    worlds = [f"probeworld:tiny@train_size=8,val_size=4,test_size=4,num_tracks=4,seed={s}" for s in (1, 2)]
    monkeypatch.chdir(tmp_path)
    for world in worlds:
        _run(["probe", "--task", "action", "--backbone", f"walt:{runs.video}", "--block", "1", "--dataset", world,
              "--store", "run/results.sqlite", "--cache", str(runs.cache), "--quiet", *PROBE])
    lines = _run(["report", "run"]).splitlines()
    for world in worlds:
        (row,) = [ln for ln in lines if world in ln and " top1 " in ln]
        assert row.split()[-1] == "1"  # n = 1: one seed on this dataset
    assert (tmp_path / "run/report/report.html").is_file()


def test_a_clip_shape_the_backbone_cannot_take_is_refused_before_any_compute(runs, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(runs)
    bad = WORLD.replace("@", "@frames=8,")
    for args in (["extract", "--backbone", "walt:runs/video", "--block", "1"],
                 ["probe", "--task", "action", "--backbone", "walt:runs/video", "--block", "1", "--store",
                  str(tmp_path / "r.sqlite")]):
        out = _run([*args, "--dataset", bad, "--cache", str(tmp_path / "c"), "--quiet"], code=2)
        assert "clips of 8 frames: this tokenizer takes 1 + k * 2 frames" in out
        assert not (tmp_path / "c").exists() and not (tmp_path / "r.sqlite").exists()  # no pixels rendered


def test_a_spec_records_its_path_relative_to_the_run_and_keeps_options_and_split() -> None:
    from diffprobe.data.registry import map_spec_path
    from diffprobe.train.rundir import record_spec

    assert record_spec("videos:clips@frames=9,size=32#train", Path("runs/tok")) == \
        "videos:../../clips@frames=9,size=32#train"
    assert record_spec(WORLD, Path("runs/tok")) == WORLD  # a preset name, not a path
    assert map_spec_path("kinetics:/data/k400@size=32", str.upper) == "kinetics:/data/k400@size=32"  # absolute
