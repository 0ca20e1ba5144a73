"""Bad input as a user meets it: every command answers a mistake with one line ``Error: ...`` (exit status 2, no
traceback) that names the file or setting; damaged files say what to do and are never deleted or rewritten."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from fixtures_runs import WORLD, tiny_runs

from diffprobe.cli import main
from diffprobe.errors import DiffprobeError, FileProblem
from diffprobe.features.cache import FeatureCache, FeatureKey
from diffprobe.tasks.targets import load_targets, save_targets


def _error(args: list[str]) -> str:
    """Run a command that must fail on its input; returns its one line."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (args, result.output, result.exception)
    line = result.output.strip()
    assert line.startswith("Error: ") and "\n" not in line and "Traceback" not in result.output, result.output
    return line


def test_every_command_answers_bad_input_with_one_line(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["world", "--preset", "huge", "--out", str(tmp_path / "w")], "unknown preset 'huge'"),
        (["data", "info", "nope:/x"], "unknown kind 'nope'"),
        (["data", "preview", f"kinetics:{tmp_path / 'k400'}", "--out", str(tmp_path / "p")], "k400: no such file"),
        (["train-tokenizer", "--out", str(tmp_path / "tok"), "--dataset", "probeworld:tiny@heigth=3"],
         "unknown key(s) ['heigth']"),
        (["train", "--mode", "video", "--tokenizer", str(empty), "--out", str(tmp_path / "v")],
         "model.json: no exported model"),
        (["sample", str(empty)], "model.json: no exported model"),
        (["backbone", "info", "walt:/nonexistent"], "/nonexistent/model.json: no exported model"),
        (["backbone", "check", "foo:bar"], "unknown kind 'foo'"),
        (["extract", "--backbone", "foo:bar", "--block", "1"], "unknown kind 'foo'"),
        (["probe", "--task", "depth", "--backbone", "walt:/nonexistent", "--block", "2"],
         "/nonexistent/model.json: no exported model (has the run finished?)"),
        (["report", str(empty)], "results.sqlite: no results store"),
    ]
    for args, fragment in cases:
        assert fragment in _error(args), args


def test_mistakes_with_a_valid_run_are_one_line(tmp_path_factory, tmp_path) -> None:
    """An unknown task, a block the model lacks (every backbone kind: the check is the Backbone base class's) and a
    clip size the tokenizer cannot take, each with a finished run: one line naming the value and what is valid."""
    from diffprobe.tasks import TASKS

    runs = tiny_runs(tmp_path_factory.getbasetemp())
    video, store = f"walt:{runs.video}", ["--store", str(tmp_path / "r.sqlite")]
    cache = ["--cache", str(runs.cache), "--quiet"]
    line = _error(["probe", "--task", "acton", "--backbone", video, "--block", "4", "--dataset", WORLD, *store, *cache])
    assert line == f"Error: unknown task 'acton'; known tasks are {', '.join(TASKS)}"
    probe = ["probe", "--task", "action", "--backbone", video, "--dataset", WORLD, *store, *cache]
    for args in (["extract", "--backbone", video, "--block", "9", "--dataset", WORLD, "--split", "test", *cache],
                 [*probe, "--block", "9"]):
        line = _error(args)
        assert line.startswith("Error: block(s) [9] out of range: walt-video-") and line.endswith(
            f"has blocks 0..{runs.depth} (0: its input tokens)"), line
    line = _error(["extract", "--backbone", f"latents:{runs.tokenizer}", "--block", "1", "--dataset", WORLD, *cache])
    assert "block(s) [1] out of range: latents-" in line and "has blocks 0..0" in line
    eight = WORLD + ",frames=8"
    line = _error(["extract", "--backbone", video, "--block", "2", "--dataset", eight, "--split", "test", *cache])
    assert line == ("Error: clips of 8 frames: this tokenizer takes 1 + k * 2 frames (temporal compression 2), e.g. 7 "
                    "or 9; set the dataset's frames option")


def test_a_report_headline_the_store_does_not_hold_is_named(tmp_path_factory) -> None:
    runs = tiny_runs(tmp_path_factory.getbasetemp())  # its store holds one cell, at block 1, t 0
    line = _error(["report", str(runs.report), "--block", "3", "--t", "200"])
    assert line == ("Error: no backbone of study 'adhoc' was measured at block 3, t 200; the store holds (block, t) "
                    "(1, 0)")


def test_every_backbone_kind_checks_blocks_noise_and_seeds() -> None:
    from diffprobe.backbones.base import Backbone
    from diffprobe.errors import InputError

    class Constant(Backbone):  # a new kind that checks nothing itself
        identity, num_blocks, device = "constant", 2, torch.device("cpu")

        def features(self, video, clip_ids, blocks, t, noise_seed, ensemble=1):
            return {b: torch.zeros(len(video), 1, 1, 1, 1) for b in blocks}

    bb, video, ids = Constant(), torch.zeros(1, 1, 8, 8, 3, dtype=torch.uint8), torch.zeros(1, dtype=torch.long)
    assert set(bb.features(video, ids, [0, 2], 1000.0, 0)) == {0, 2}
    for kwargs, message in [({"blocks": [3]}, r"block\(s\) \[3\] out of range: constant has blocks 0\.\.2"),
                            ({"t": 1000.5}, "noise level t=1000.5: must be in 0..1000"),
                            ({"t": float("nan")}, "noise level t=nan"),
                            ({"noise_seed": -1}, "noise seed -1: must be >= 0"),
                            ({"ensemble": 0}, "ensemble 0: must be >= 1")]:
        args = {"blocks": [1], "t": 0.0, "noise_seed": 0, **kwargs}
        with pytest.raises(InputError, match=message):
            bb.features(video, ids, **args)

    class Wrapped(Constant):  # an override that passes its arguments on as *args / **kwargs is checked alike
        def features(self, video, clip_ids, *args, **kwargs):
            return super().features(video, clip_ids, *args, **kwargs)

    with pytest.raises(InputError, match=r"block\(s\) \[5\] out of range"):
        Wrapped().features(video, ids, [5], 0.0, noise_seed=0)


def test_debug_shows_the_traceback_and_bugs_keep_theirs(monkeypatch) -> None:
    with pytest.raises(DiffprobeError, match="unknown kind"):
        CliRunner().invoke(main, ["--debug", "data", "info", "nope:/x"], catch_exceptions=False)
    monkeypatch.setenv("DIFFPROBE_DEBUG", "1")
    with pytest.raises(DiffprobeError):
        CliRunner().invoke(main, ["data", "info", "nope:/x"], catch_exceptions=False)
    monkeypatch.delenv("DIFFPROBE_DEBUG")
    import diffprobe.data.registry as registry

    monkeypatch.setitem(registry.DATASETS, "boom", lambda spec: 1 / 0)  # a bug, not bad input
    result = CliRunner().invoke(main, ["data", "info", "boom:x"])
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)


def test_a_results_store_that_is_not_sqlite_is_left_alone(tmp_path) -> None:
    store = tmp_path / "results.sqlite"
    store.write_bytes(b"these are my notes, not a database\n" * 100)
    before = store.read_bytes()
    line = _error(["report", str(tmp_path)])
    assert "results.sqlite: not a diffprobe results store" in line and "move it away" in line
    assert store.read_bytes() == before


def test_a_config_with_a_typo_names_the_file_and_key(tmp_path) -> None:
    from diffprobe.study.config import StudyConfig

    run = tmp_path / "study"
    run.mkdir()
    data = StudyConfig.preset("tiny").to_dict()
    data["tokenzier"] = data.pop("tokenizer")
    (run / "study_config.json").write_text(json.dumps(data))
    before = (run / "study_config.json").read_bytes()
    line = _error(["study", "--out", str(run), "--quiet"])
    assert "study_config.json: unknown key(s) ['tokenzier']" in line and "fix the file, or restore it" in line
    assert (run / "study_config.json").read_bytes() == before and sorted(p.name for p in run.iterdir()) == [
        "study_config.json"]


def test_a_truncated_feature_shard_names_itself_and_stays(tmp_path) -> None:
    cache = FeatureCache(tmp_path)
    key = FeatureKey("b", "d", "train", "clip", 1, 0.0, 0)
    cache.write_shard(key, 0, torch.arange(4), torch.randn(4, 2, 2, 2, 8))
    cache.mark_complete(key, 4, 4, (2, 2, 2, 8), "float32")
    shard = cache.shard_path(key, 0)
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(FileProblem, match=r"shard-00000.safetensors: not a readable safetensors file.*delete .* to "
                                          r"extract these features again"):
        cache.open(key).load_shard(0)
    assert shard.is_file() and len(shard.read_bytes()) == 100


def test_targets_of_another_task_are_refused(tmp_path) -> None:
    import numpy as np

    path = tmp_path / "action-v1.safetensors"
    save_targets(path, {"depth": {"depth": np.ones((2, 3, 4, 4), np.float32)}})
    with pytest.raises(FileProblem, match=r"action-v1.safetensors: no targets for task 'action'; it holds \['depth'\]"
                                          r" \(delete the file to compute it again\)"):
        load_targets(path, "action")


def test_a_truncated_checkpoint_names_itself_and_what_to_do(tmp_path) -> None:
    from diffprobe.train.tokenizer import TokenizerRunConfig, train_tokenizer

    world = "dataset=probeworld:tiny@train_size=8,val_size=2,test_size=2,num_tracks=4"
    cfg = TokenizerRunConfig.preset("tiny").override([world, "train.steps=2", "train.ckpt_every=1", "stats_clips=4",
                                                      "train.tensorboard=false"])
    cache = FeatureCache(tmp_path / "cache")
    train_tokenizer(cfg, tmp_path / "tok", cache, progress=False)  # checkpoints at steps 1 and 2
    weights = tmp_path / "tok" / "ckpt" / "step-00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])  # damaged on disk afterwards
    longer = cfg.override(["train.steps=3"])  # resuming reads the latest checkpoint
    with pytest.raises(DiffprobeError, match=r"step-00000002/model.safetensors: not a readable safetensors file.*to "
                                             r"resume from the checkpoint before it, delete .*step-00000002"):
        train_tokenizer(longer, tmp_path / "tok", cache, progress=False)
    assert len(weights.read_bytes()) == 64  # left as it is
