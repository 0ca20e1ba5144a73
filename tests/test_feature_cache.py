"""The feature cache returns exactly what was extracted, and extraction resumes shard by shard."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from diffprobe.backbones.base import Backbone, clip_generator
from diffprobe.data.dataset import ClipSequence
from diffprobe.errors import FileProblem, InputError
from diffprobe.features import extract
from diffprobe.features.cache import FeatureCache, FeatureKey
from diffprobe.features.extract import VIEWS, extract_features, shard_clips
from diffprobe.features.pooling import Pool
from diffprobe.features.sources import ensure_features


class NoisyMeanBackbone(Backbone):
    """A stand-in backbone: per-frame 2x2 pooled colours plus seeded noise scaled by t, one 'block' per scale."""

    identity = "noisy-mean"
    num_blocks = 2
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls = 0

    def features(self, video, clip_ids, blocks: Sequence[int], t, noise_seed, ensemble=1):
        self.calls += 1
        x = video.float() / 255.0  # (B, T, H, W, 3)
        b, tt, h, w, c = x.shape
        pooled = x.reshape(b, tt, 2, h // 2, 2, w // 2, c).mean((3, 5))  # (B, T, 2, 2, 3)
        noise = torch.stack([torch.randn(pooled.shape[1:], generator=clip_generator(noise_seed, int(i), self.device))
                             for i in clip_ids])
        return {k: pooled * (k + 1) + noise * t / 1000 for k in blocks}


def _videos(ids):
    rng = [np.random.default_rng(i) for i in ids]
    return torch.from_numpy(np.stack([r.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8) for r in rng]))


def test_cache_round_trip_and_resume(tmp_path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    key = FeatureKey("noisy-mean", "toy", "train", "clip", block=0, t=500.0, noise_seed=3)
    bb = NoisyMeanBackbone()
    keys = extract_features(bb.features, bb.device, _videos, 10, key, [0, 1], cache, batch_size=3, shard_size=4,
                            dtype=torch.float32, progress=False)
    assert [k.block for k in keys] == [0, 1] and all(cache.is_complete(k) for k in keys)
    idx, feats = cache.open(keys[1]).load_all()
    assert idx.tolist() == list(range(10)) and feats.shape == (10, 3, 2, 2, 3)
    # exactly what the backbone gives for these clips (noise depends only on (seed, clip id), not on batching)
    expect = bb.features(_videos(range(10)), torch.arange(10), [1], 500.0, 3)[1]
    assert torch.equal(feats, expect)
    # a second call is a no-op; a different noise seed gives different features
    calls = bb.calls
    extract_features(bb.features, bb.device, _videos, 10, key, [0, 1], cache, batch_size=3, shard_size=4,
                     progress=False)
    assert bb.calls == calls
    other = extract_features(bb.features, bb.device, _videos, 10, FeatureKey(**{**key.__dict__, "noise_seed": 4}),
                             [1], cache, shard_size=4, dtype=torch.float32, progress=False)[0]
    assert not torch.equal(cache.open(other).load_all()[1], feats)


def test_interrupted_extraction_keeps_finished_shards(tmp_path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    key = FeatureKey("noisy-mean", "toy", "val", "frame0", block=0, t=0.0, noise_seed=0)

    class Dies(NoisyMeanBackbone):
        def features(self, video, clip_ids, *a, **kw):
            if int(clip_ids[0]) >= 4:
                raise KeyboardInterrupt
            return super().features(video, clip_ids, *a, **kw)

    first_frame = lambda ids: VIEWS["frame0"](_videos(ids))  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        extract_features(Dies().features, torch.device("cpu"), first_frame, 10, key, [0], cache, batch_size=4,
                         shard_size=4, progress=False)
    assert cache.has_shard(key, 0) and not cache.has_shard(key, 1) and not cache.is_complete(key)
    bb = NoisyMeanBackbone()
    extract_features(bb.features, bb.device, first_frame, 10, key, [0], cache, batch_size=4, shard_size=4,
                     dtype=torch.float32, progress=False)
    assert bb.calls == 2  # only shards 1 and 2 were computed
    idx, feats = cache.open(key).load_all()
    assert feats.shape == (10, 1, 2, 2, 3)  # frame0 view: one frame
    with pytest.raises(FileNotFoundError, match="diffprobe extract"):
        cache.open(FeatureKey("noisy-mean", "toy", "test", "clip", 0, 0.0, 0))


def test_shards_are_sized_by_bytes_in_powers_of_two() -> None:
    assert shard_clips((3, 2, 2, 3), torch.float16) == 256  # 72 bytes a clip: the clip count caps the shard
    assert shard_clips((1, 8, 8, 64), torch.float16, shard_bytes=30_000) == 2  # 8192 bytes a clip: 3 fit -> 2
    assert shard_clips((1, 8, 8, 64), torch.float32, shard_bytes=1000) == 1
    assert shard_clips((9, 32, 32, 3), torch.uint8, shard_size=1024) == 1024


def test_blocks_of_different_sizes_shard_in_step_and_read_back_exactly(tmp_path) -> None:
    """Block 0's features are 4x block 1's, so its shards hold a quarter of the clips; a pass fills both."""
    def forward(video, ids, blocks, t, seed, ensemble):
        x = video.float().mean((1, 2, 3, 4))[:, None, None, None, None] + ids[:, None, None, None, None]
        return {b: x.expand(-1, 1, 4 if b == 0 else 2, 4 if b == 0 else 2, 8).clone() for b in blocks}

    cache = FeatureCache(tmp_path / "cache")
    key = FeatureKey("sizes", "toy", "val", "clip", block=0, t=0.0, noise_seed=0)
    clip = 2 * 2 * 8 * 2  # block 1's bytes a clip at fp16 (block 0: 4x)
    keys = extract_features(forward, torch.device("cpu"), _videos, 11, key, [0, 1], cache, batch_size=3,
                            shard_bytes=4 * clip, progress=False)
    sets = [cache.open(k) for k in keys]
    assert [s.shard_size for s in sets] == [1, 4] and [s.num_shards for s in sets] == [11, 3]
    for b, s in enumerate(sets):
        idx, feats = s.load_all()
        expected = forward(_videos(list(range(11))), torch.arange(11), [b], 0.0, 0, 1)[b].half()
        assert torch.equal(idx, torch.arange(11)) and torch.equal(feats, expected)


def test_a_split_larger_than_memory_extracts_within_one_shard_per_block(tmp_path) -> None:
    """300 MB of features under a 16 MB shard cap: the process grows by a few shards, not by the split."""
    script = f"""
import resource, torch
from diffprobe.features.cache import FeatureCache, FeatureKey
from diffprobe.features.extract import extract_features

def forward(x, ids, blocks, t, seed, ensemble):
    return {{b: torch.ones(len(ids), 1, 64, 64, 256) for b in blocks}}  # 2 MB a clip at fp16

inputs = lambda ids: torch.zeros(len(ids), 1)
cache = FeatureCache({str(tmp_path / "cache")!r})
key = FeatureKey("big", "toy", "val", "clip", 0, 0.0, 0)
extract_features(forward, torch.device("cpu"), inputs, 8, key, [0], cache, batch_size=4, shard_bytes=16 << 20,
                 progress=False)  # warm the allocator at this size
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
extract_features(forward, torch.device("cpu"), inputs, 150, FeatureKey("big", "toy", "test", "clip", 0, 0.0, 0),
                 [0], cache, batch_size=4, shard_bytes=16 << 20, progress=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    grown_mb = int(out.stdout.split()[-1])
    assert grown_mb < 120, f"peak RSS grew by {grown_mb} MB extracting 300 MB of features"
    assert FeatureCache(tmp_path / "cache").open(FeatureKey("big", "toy", "test", "clip", 0, 0.0, 0)).num_shards == 19


def test_out_of_device_memory_halves_the_batch_and_goes_on(tmp_path, capsys) -> None:
    bb = NoisyMeanBackbone()
    sizes = []

    def forward(video, ids, blocks, t, seed, ensemble):
        sizes.append(len(ids))
        if len(ids) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (a stand-in)")
        return bb.features(video, ids, blocks, t, seed, ensemble)

    cache = FeatureCache(tmp_path / "cache")
    key = FeatureKey("oom", "toy", "val", "clip", block=0, t=100.0, noise_seed=3)
    extract_features(forward, torch.device("cpu"), _videos, 10, key, [0, 1], cache, batch_size=8, shard_size=8,
                     dtype=torch.float32, progress=False)
    assert sizes == [1, 8, 4, 2, 2, 2, 2, 2]  # the shape probe, the failed 8, the failed 4, then pieces of 2
    err = capsys.readouterr().err
    assert err.count("out of device memory") == 2 and "going on at 2" in err
    for b in (0, 1):
        feats = cache.open(FeatureKey("oom", "toy", "val", "clip", b, 100.0, 3)).load_all()[1]
        torch.testing.assert_close(feats, bb.features(_videos(list(range(10))), torch.arange(10), [b], 100.0, 3)[b])


def test_shards_of_another_size_on_disk_are_an_error_naming_the_folder(tmp_path) -> None:
    bb = NoisyMeanBackbone()
    cache = FeatureCache(tmp_path / "cache")
    key = FeatureKey("noisy-mean", "toy", "val", "clip", block=0, t=0.0, noise_seed=0)
    cache.write_shard(key, 0, torch.arange(4), torch.zeros(4, 3, 2, 2, 3))  # an earlier run's 4-clip shard
    with pytest.raises(FileProblem, match=r"shard-00000.safetensors: holds 4 clips, not the 2 .* delete"):
        extract_features(bb.features, bb.device, _videos, 10, key, [0], cache, shard_size=2, progress=False)


def test_an_extraction_the_disk_cannot_hold_is_refused_before_it_writes(tmp_path, monkeypatch) -> None:
    bb = NoisyMeanBackbone()
    cache = FeatureCache(tmp_path / "cache")
    key = FeatureKey("noisy-mean", "toy", "val", "clip", block=0, t=0.0, noise_seed=0)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(extract.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    # 10 clips x 3 x 2 x 2 x 3 x 2 bytes x 2 blocks = 1440 bytes > 1000
    with pytest.raises(InputError, match=r"cache: these features need 0\.0 GB and the disk has 0\.0 GB free"):
        extract_features(bb.features, bb.device, _videos, 10, key, [0, 1], cache, progress=False)
    assert not any(cache.root.rglob("shard-*"))
    extract_features(bb.features, bb.device, _videos, 10, key, [0], cache, progress=False)  # 720 bytes fit
    assert cache.is_complete(key)


def test_pooling_averages_each_cell_and_keeps_the_layout() -> None:
    x = torch.arange(2 * 3 * 4 * 6 * 5, dtype=torch.float32).reshape(2, 3, 4, 6, 5)  # (n, T, H, W, C)
    pooled = Pool.parse("2x3")(x)
    assert pooled.shape == (2, 3, 2, 3, 5)
    torch.testing.assert_close(pooled[1, 2, 1, 0], x[1, 2, 2:4, 0:2].mean((0, 1)))
    both = Pool.parse("1x1x1")(x)
    torch.testing.assert_close(both[:, 0, 0, 0], x.mean((1, 2, 3)))
    assert str(Pool.parse("2X4x4")) == "2x4x4" and str(Pool.parse("4x4")) == "4x4"
    for bad in ("4", "4x0", "axb", "1x2x3x4"):
        with pytest.raises(InputError, match="expected HxW or TxHxW"):
            Pool.parse(bad)
    with pytest.raises(InputError, match="grid is 3x4x6; pooling can only make it smaller"):
        Pool.parse("8x8")(x)


def test_pooled_features_are_cached_apart_and_equal_the_pooled_forward(tmp_path) -> None:
    bb = NoisyMeanBackbone()
    cache = FeatureCache(tmp_path / "cache")
    clips = _SeqOf(_videos(list(range(6))))
    full = ensure_features(bb, clips, "clip", [0], 200.0, 1, cache, dtype=torch.float32, progress=False)[0]
    pooled = ensure_features(bb, clips, "clip", [0], 200.0, 1, cache, dtype=torch.float32, progress=False,
                             pool="1x1")[0]
    assert full.path != pooled.path and pooled.path.name.endswith("_pool1x1")
    assert full.feature_shape == (3, 2, 2, 3) and pooled.feature_shape == (3, 1, 1, 3)
    torch.testing.assert_close(pooled.load_all()[1], full.load_all()[1].mean((2, 3), keepdim=True))


class _SeqOf(ClipSequence):
    """Clips from a stack of videos (for ensure_features, which reads a sequence)."""

    def __init__(self, videos: torch.Tensor) -> None:
        self.videos, self.dataset, self.part = videos, "toy", "val"

    def __len__(self) -> int:
        return len(self.videos)

    def read(self, index: int) -> dict:
        return {"video": self.videos[index].numpy()}


def test_probe_and_extract_take_a_pool_from_another_folder(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from diffprobe.cli import main

    monkeypatch.chdir(tmp_path)
    data = "probeworld:tiny@train_size=12,val_size=6,test_size=6"
    common = ["--backbone", "pixels@patch=8", "--block", "0", "--dataset", data, "--cache", "cache", "--quiet"]
    out = CliRunner().invoke(main, ["extract", *common, "--pool", "2X2"])
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*_pool2x2")) == ["block0_t0_seed0_pool2x2"] * 3
    probe = ["probe", "--task", "action", *common, "--set", "steps=4", "--set", "eval_every=0"]
    pooled = CliRunner().invoke(main, [*probe, "--pool", "2x2"])
    assert pooled.exit_code == 0 and "pixels-p8-u1+pool2x2 block 0" in pooled.output, pooled.output
    plain = CliRunner().invoke(main, probe)  # not the pooled cell: trained and stored apart
    assert plain.exit_code == 0 and "already in" not in plain.output and "pixels-p8-u1 block 0" in plain.output
    bad = CliRunner().invoke(main, [*probe, "--pool", "2"])
    assert bad.exit_code == 2 and "pool '2': expected HxW or TxHxW" in bad.output


def test_a_corrupt_shard_left_on_disk_is_an_error_naming_it(tmp_path) -> None:
    bb = NoisyMeanBackbone()
    cache = FeatureCache(tmp_path / "cache")
    key = FeatureKey("noisy-mean", "toy", "val", "clip", block=0, t=0.0, noise_seed=0)
    cache.shard_path(key, 0).parent.mkdir(parents=True)
    cache.shard_path(key, 0).write_bytes(b"not a shard")
    with pytest.raises(FileProblem, match=r"shard-00000.safetensors: not a readable feature shard.*\(delete"):
        extract_features(bb.features, bb.device, _videos, 10, key, [0], cache, progress=False)
