"""Bad input as a user meets it: every command answers a mistake with one line ``Error: ...`` (exit status 2, no
traceback) that names the file or setting; damaged files say what to do and are never deleted or rewritten."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

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


def test_debug_shows_the_traceback_and_bugs_keep_theirs(monkeypatch) -> None:
    with pytest.raises(DiffprobeError, match="unknown kind"):
        CliRunner().invoke(main, ["--debug", "data", "info", "nope:/x"], catch_exceptions=False)
    monkeypatch.setenv("DIFFPROBE_DEBUG", "1")
    with pytest.raises(DiffprobeError):
        CliRunner().invoke(main, ["data", "info", "nope:/x"], catch_exceptions=False)
    monkeypatch.delenv("DIFFPROBE_DEBUG")
    import diffprobe.data.registry as registry

    monkeypatch.setitem(registry.DATASETS, "boom", lambda path, options, spec: 1 / 0)  # a bug, not bad input
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
