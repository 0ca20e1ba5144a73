"""Streamed features: computed as the probes read them, equal to the cached ones, one forward for every block of a
noise level, and no feature cache written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fixtures_runs import PROBE, WORLD, tiny_runs

from diffprobe.backbones.registry import load_backbone
from diffprobe.cli import main
from diffprobe.data.splits import ROLES
from diffprobe.features.cache import FeatureCache
from diffprobe.features.sources import ensure_features
from diffprobe.features.stream import stream_features
from diffprobe.tasks.probe_config import ProbeConfig
from diffprobe.tasks.roles import task_roles
from diffprobe.tasks.runner import CellRequest, run_probes


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return tiny_runs(tmp_path_factory.getbasetemp())


def _feature_folders(cache: Path) -> set[Path]:
    return {p.parent for p in cache.rglob("complete.json") if "block" in p.parent.name and "_t0_" not in
            p.parent.name}


def test_streamed_features_equal_the_cached_ones_shard_for_shard(twin, tmp_path) -> None:
    backbone = load_backbone(f"walt:{twin.video}", torch.device("cpu")).backbone
    clips = task_roles("depth", {r: WORLD for r in ROLES})["train"].clips
    cache = FeatureCache(tmp_path / "cache")
    streamed = stream_features(backbone, clips, "clip", [1, 3], 300.0, 2, cache, batch_size=3, shard_size=4,
                               progress=False)
    cached = ensure_features(backbone, clips, "clip", [1, 3], 300.0, 2, cache, batch_size=3, shard_size=4,
                             progress=False)
    for shard in (1, 0):
        for b in (1, 3):
            assert streamed[b].num_shards == cached[b].num_shards == 2
            assert streamed[b].feature_shape == cached[b].feature_shape
            assert streamed[b].path == cached[b].path  # where the cache holds the same features
            (i_s, f_s), (i_c, f_c) = streamed[b].load_shard(shard), cached[b].load_shard(shard)
            assert torch.equal(i_s, i_c)
            assert f_s.dtype == f_c.dtype == torch.float16
            torch.testing.assert_close(f_s, f_c, atol=2e-3, rtol=2e-3)  # noised alike: the clip's own noise
    # each shard once for both blocks (the shape came from a forward of its own); a shard read again is computed again
    assert streamed[1].forward is streamed[3].forward and streamed[1].forward.clips_computed == 8
    streamed[3].load_shard(1)
    assert streamed[1].forward.clips_computed == 8 + 4


def test_a_bank_trains_alike_streamed_or_cached_and_streams_one_forward_per_shard(twin, tmp_path,
                                                                                   monkeypatch) -> None:
    resolved = load_backbone(f"walt:{twin.video}", torch.device("cpu"))
    roles = task_roles("depth", {r: WORLD for r in ROLES})
    cfg = ProbeConfig.preset("tiny").override(["steps=12", "batch_size=2", "eval_batch_size=4", "eval_every=4",
                                               "readout.width=16", "readout.heads=2", "warmup_steps=1"])
    cells = [CellRequest(resolved.backbone, block, 200.0, 0, 0) for block in (2, 5)]
    calls: list[tuple[int, list[int]]] = []
    real = type(resolved.backbone).features_from_encoded

    def counted(self, encoded, clip_ids, blocks, *args):
        calls.append((len(clip_ids), list(blocks)))
        return real(self, encoded, clip_ids, blocks, *args)

    monkeypatch.setattr(type(resolved.backbone), "features_from_encoded", counted)
    cache = tmp_path / "cache"
    streamed = run_probes(cells, roles, "depth", cfg, FeatureCache(cache), torch.device("cpu"), progress=False,
                          stream=True)
    assert _feature_folders(cache) == set()  # nothing but the encoder's latents and the targets written
    assert all(blocks == [2, 5] for _, blocks in calls)  # both cells' blocks from each forward
    # per role one clip for the shape, then each role's clips: a role of one shard is computed once (the shard is
    # kept while the probes read it again)
    assert sum(n for n, _ in calls) == 3 + 8 + 4 + 4
    cached = run_probes(cells, roles, "depth", cfg, FeatureCache(tmp_path / "cached"), torch.device("cpu"),
                        progress=False)
    assert len(_feature_folders(tmp_path / "cached")) == 6  # 2 blocks x 3 roles
    for s, c in zip(streamed, cached, strict=True):
        assert s.chosen_step == c.chosen_step
        assert s.test.keys() == c.test.keys()
        for k in s.test:
            assert s.test[k] == pytest.approx(c.test[k], rel=1e-3, abs=1e-4), k
        np.testing.assert_allclose(s.final_losses, c.final_losses, rtol=1e-3)


def test_probe_streams_from_another_folder_and_stores_the_same_cell(twin, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["probe", "--task", "action", "--backbone", f"walt:{twin.video}", "--dataset", WORLD, "--block", "2",
            "--t", "100", "--cache", "c", "--quiet", *PROBE]
    first = CliRunner().invoke(main, [*args, "--stream"])
    assert first.exit_code == 0, first.output
    assert "top1=" in first.output
    assert _feature_folders(tmp_path / "c") == set()
    again = CliRunner().invoke(main, args)  # the cached path finds the streamed cell in the store
    assert again.exit_code == 0, again.output
    assert again.output.startswith("already in results.sqlite")
