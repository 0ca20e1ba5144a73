"""Shards round-trip, resume and refuse foreign files; the CLI writes shards, config and previews."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from diffprobe.data import ProbeWorld, ProbeWorldConfig
from diffprobe.data.preview import _annotated_frame
from diffprobe.data.shards import ShardDataset, ShardError, read_metadata, write_shards

CFG = ProbeWorldConfig.preset("tiny").replace(train_size=8)
SOURCE = {"generator": "ProbeWorld", "config": CFG.to_dict(), "split": "train"}


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key] and type(a[key]) is type(b[key]), key


def test_round_trip_and_resume(tmp_path) -> None:
    world = ProbeWorld(CFG)
    calls: list[list[int]] = []

    def make(indices):
        calls.append(list(indices))
        return world.batch(indices)

    paths = write_shards(tmp_path, 7, make, SOURCE, shard_size=3, progress=False)
    assert [p.name for p in paths] == ["shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    assert read_metadata(paths[2])["indices"] == [6]
    stored = ShardDataset(tmp_path)
    assert len(stored) == 7 and stored.source == json.loads(json.dumps(SOURCE))
    for i in range(7):
        _assert_same(stored[i], world[i])
    # a killed run: shard 1 missing -> only its clips are made again, the others are kept untouched
    before = paths[0].stat().st_mtime_ns
    paths[1].unlink()
    calls.clear()
    write_shards(tmp_path, 7, make, SOURCE, shard_size=3, progress=False)
    assert calls == [[3, 4, 5]] and paths[0].stat().st_mtime_ns == before
    _assert_same(ShardDataset(tmp_path)[4], world[4])
    with pytest.raises(ShardError, match="shard-00000"):  # same folder, other config: refused, not overwritten
        write_shards(tmp_path, 7, make, {**SOURCE, "split": "val"}, shard_size=3, progress=False)


def test_bad_files_are_named(tmp_path) -> None:
    (tmp_path / "shard-00000.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ShardError, match="shard-00000.safetensors"):
        ShardDataset(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    save_file({"w": torch.zeros(2)}, str(other / "shard-00000.safetensors"), metadata={"format": "weights"})
    with pytest.raises(ShardError, match="not a diffprobe clip shard"):
        ShardDataset(other)
    with pytest.raises(ShardError, match="no shard"):
        ShardDataset(tmp_path / "missing")


def test_track_dots_filled_when_visible_hollow_when_occluded() -> None:
    clip = {"video": np.zeros((1, 8, 8, 3), np.uint8), "tracks": np.array([[[2.5, 2.5]], [[6.5, 6.5]], [[20, 2]]],
                                                                           np.float32),
            "visible": np.array([[True], [False], [True]]), "boxes": np.zeros((0, 1, 4), np.float32),
            "box_visible": np.zeros((0, 1), bool)}
    img = np.asarray(_annotated_frame(clip, 0, scale=10))
    assert img[25, 25].sum() > 0  # filled dot centre
    assert img[65, 65].sum() == 0 and img[65, 62:69].sum() > 0  # hollow: dark centre, coloured rim
    assert img.sum() > 0


def test_cli_writes_shards_config_and_previews(tmp_path) -> None:
    from diffprobe.cli import main

    out = tmp_path / "run"
    args = ["world", "--preset", "tiny", "--num", "3", "--out", str(out), "--shard-size", "2", "--preview", "2",
            "--set", "max_objects=2", "--set", "train_size=10"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cfg = ProbeWorldConfig.load(out / "config.json")
    assert cfg.max_objects == 2 and cfg.train_size == 10
    stored = ShardDataset(out)
    world = ProbeWorld(cfg)
    assert len(stored) == 3
    _assert_same(stored[2], world[2])
    gif = Image.open(out / "preview" / "clip-000001.gif")
    assert gif.n_frames == cfg.frames
    sheet = Image.open(out / "preview" / "contact_sheet.png")
    assert sheet.width > 600 and sheet.height > 200
    bad = CliRunner().invoke(main, ["world", "--num", "2", "--out", str(tmp_path / "x"), "--set", "framez=3"])
    assert bad.exit_code == 2 and bad.output.startswith("Error: ") and "framez" in bad.output


def test_collate_pads_boxes_for_a_dataloader() -> None:
    from torch.utils.data import DataLoader

    from diffprobe.data.collate import collate_clips

    world = ProbeWorld(CFG)
    ks = [len(world[i]["boxes"]) for i in range(4)]
    batch = next(iter(DataLoader(world, batch_size=4, collate_fn=collate_clips)))
    assert batch["video"].shape == (4, CFG.frames, CFG.height, CFG.width, 3) and batch["video"].dtype == torch.uint8
    assert batch["boxes"].shape == (4, max(ks), CFG.frames, 4) and batch["label"].shape == (4,)
    for i, k in enumerate(ks):
        assert torch.equal(batch["boxes"][i, :k], torch.from_numpy(world[i]["boxes"]))
        assert not batch["box_visible"][i, k:].any() and not batch["boxes"][i, k:].any()
    assert batch["action"].tolist() == [world[i]["action"] for i in range(4)]
