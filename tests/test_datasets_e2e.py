"""Real-format datasets end to end through the CLI: a tokenizer and a twin train on a folder of mp4 files, and
`diffprobe probe` runs every task on a reader fixture (point tracking trained on Probe World, tested on TAP-Vid;
box tracking with a split per role) and stores its result; a study with a dataset per task runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_geometry import write_re10k_fixture, write_scannet_fixture
from fixtures_tracking import write_davis_fixture, write_tapvid_davis_fixture
from fixtures_video import real_frames, write_imagefolder_fixture, write_kinetics_fixture, write_video

from diffprobe.cli import main
from diffprobe.study.store import ResultsStore
from diffprobe.tasks import TASKS

CLIP = "frames=5,stride=1,size=32"  # 5 frames of 32 x 32: what the tiny causal tokenizer takes (1 + 2k frames)
PROBE = ["--set", "steps=3", "--set", "batch_size=2", "--set", "eval_batch_size=4", "--set", "readout.width=16",
         "--set", "readout.heads=2", "--set", "warmup_steps=1", "--set", "eval_every=0"]


def _ok(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> tuple[Path, Path]:
    """A tokenizer and a video twin trained on ``videos:DIR`` of mp4 files."""
    root = tmp_path_factory.mktemp("e2e")
    for i, source in enumerate(("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")):
        write_video(root / "mp4" / f"clip{i}.mp4", real_frames(source, count=15))
    spec = f"videos:{root / 'mp4'}@{CLIP},windows=all"
    cache = str(root / "cache")
    _ok(["train-tokenizer", "--out", str(root / "tok"), "--dataset", spec, "--cache", cache, "--quiet",
         "--set", "train.steps=2", "--set", "stats_clips=4", "--set", "train.tensorboard=false"])
    _ok(["train", "--mode", "video", "--tokenizer", str(root / "tok"), "--out", str(root / "video"), "--dataset",
         spec, "--cache", cache, "--quiet", "--set", "train.steps=2", "--set", "train.batch_size=2",
         "--set", "model.depth=2", "--set", "train.tensorboard=false"])
    return root, root / "video"


def test_a_twin_trains_on_a_folder_of_mp4_files(twin) -> None:
    root, run = twin
    meta = json.loads((run / "model.json").read_text())
    assert meta["config"]["dataset"].startswith("videos:") and meta["step"] == 2
    rows = (run / "metrics.csv").read_text().splitlines()
    assert any("train/loss" in r for r in rows)
    assert json.loads((root / "tok" / "model.json").read_text())["latent_scale"] > 0


def _roles(task: str, root: Path) -> list[str]:
    """The --dataset / --*-data options of each task's reader fixture."""
    data = root / task
    if task == "image_cls":
        return ["--dataset", f"imagefolder:{write_imagefolder_fixture(data)}@size=32"]
    if task == "action":
        return ["--dataset", f"kinetics:{write_kinetics_fixture(data)}@{CLIP}"]
    if task == "depth":
        scenes = [f"scene000{i}_00" for i in range(3)]
        write_scannet_fixture(data, scenes=scenes, frames=5,
                              splits={"train": scenes[:1], "val": scenes[1:2], "test": scenes[2:]})
        return ["--dataset", f"scannet:{data}@{CLIP}"]
    if task == "camera_pose":
        write_re10k_fixture(data, clips={"train": ["a0", "a1", "a2"], "test": ["b0"]})
        return ["--dataset", f"re10k:{data}@{CLIP},windows=all"]
    if task == "point_tracking":  # trained on Probe World, tested on TAP-Vid (as TAP-Vid trains on Kubric)
        world = "probeworld:tiny@frames=5,train_size=8,val_size=4,test_size=4,num_tracks=8"
        return ["--train-data", world, "--val-data", world,
                "--test-data", f"tapvid:{write_tapvid_davis_fixture(data)}@{CLIP}"]
    davis = write_davis_fixture(data)
    return ["--train-data", f"davis:{davis}@{CLIP}#train", "--val-data", f"davis:{davis}@{CLIP}#train",
            "--test-data", f"davis:{davis}@{CLIP}#val"]


@pytest.mark.parametrize("task", list(TASKS))
def test_probe_runs_on_each_tasks_reader(twin, task, tmp_path) -> None:
    root, run = twin
    store = tmp_path / "results.sqlite"
    out = _ok(["probe", "--task", task, "--backbone", f"walt:{run}", "--block", "1", "--t", "100",
               *_roles(task, tmp_path), "--store", str(store), "--cache", str(root / "cache"), "--quiet", *PROBE])
    with ResultsStore(store) as results:
        rows = {r["metric"]: r["value"] for r in results.query(task=task)}
    metric = TASKS[task].primary_metric
    assert np.isfinite(rows[metric]) and f"{metric}_se" in rows, out


def test_a_task_without_the_fields_is_refused(twin, tmp_path) -> None:
    _, run = twin
    spec = f"imagefolder:{write_imagefolder_fixture(tmp_path / 'img')}@size=32"
    result = CliRunner().invoke(main, ["probe", "--task", "depth", "--backbone", f"walt:{run}", "--block", "1",
                                       "--dataset", spec, "--store", str(tmp_path / "r.sqlite"), "--quiet"])
    assert result.exit_code == 2 and result.output.startswith("Error: ")  # one line, no traceback
    assert "task 'depth' needs the Clip field(s) ['depth']" in result.output and spec in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_study_with_a_dataset_per_task(tmp_path) -> None:
    from test_study import MINI

    from diffprobe.study.config import StudyConfig
    from diffprobe.study.run import run_study

    davis = write_davis_fixture(tmp_path / "davis")
    kinetics = f"kinetics:{write_kinetics_fixture(tmp_path / 'k')}@frames=9,stride=1,size=32"
    task_data = {"action": {"train": kinetics, "val": kinetics, "test": kinetics},
                 "box_tracking": {"train": f"davis:{davis}@frames=5,size=32#train",
                                  "val": f"davis:{davis}@frames=5,size=32#train",
                                  "test": f"davis:{davis}@frames=5,size=32#val"}}
    cfg = StudyConfig.preset("tiny").override(
        [*MINI, 'tasks=["action","box_tracking","depth"]', 'sweep_tasks=["action"]', "budget_steps=[]",
         "noise_sweep=[200]", "block_sweep=[2]", "sizes={}", 'probe_clips={"train": 3, "val": 2, "test": 2}',
         f"task_data={json.dumps(task_data)}"])
    run_study(cfg, tmp_path / "study", progress=False)
    with ResultsStore(tmp_path / "study" / "results.sqlite") as store:
        rows = store.query(study=cfg.name, metric=["top1", "mean_iou", "abs_rel"])
    by_task = {r["task"]: r["dataset"] for r in rows if r["backbone"] == "walt-video"}
    assert set(by_task) == {"action", "box_tracking", "depth"}
    assert len(set(by_task.values())) == 3  # three different sets of clips
    assert all(np.isfinite(r["value"]) for r in rows)


def test_the_same_probe_twice_gives_identical_rows(twin, tmp_path) -> None:
    """Two runs of one command, each with its own cache and store: every stored row equal, the time column aside."""
    _, run = twin
    rows = []
    for i in range(2):
        store = tmp_path / f"r{i}.sqlite"
        _ok(["probe", "--task", "action", "--backbone", f"walt:{run}", "--block", "1", "--t", "100", "--dataset",
             "probeworld:tiny@frames=5,train_size=8,val_size=4,test_size=4", "--store", str(store), "--cache",
             str(tmp_path / f"cache{i}"), "--quiet", *PROBE])
        with ResultsStore(store) as results:
            rows.append([{k: v for k, v in r.items() if k != "time"} for r in results.query()])
    assert rows[0] == rows[1] and len(rows[0]) >= 3
