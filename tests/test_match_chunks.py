"""Chained chunks for the training-free matcher: data/chunks.py, readouts/match.match_chunks, `diffprobe match
--chunk`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_match import SHIFT, SIZE, TINY, smooth_field

from diffprobe.data.chunks import ChunkedClips, chunk_starts
from diffprobe.data.dataset import IndexedClips
from diffprobe.errors import InputError
from diffprobe.features.sources import cache_names
from diffprobe.readouts.match import match_chunks, match_grid

#: (t, y, x) queries of a 14-frame clip: at frame 0, in the middle (chained backward and forward), in the last chunk
QUERIES = np.array([[0, 20.3, 10.7], [6, 15.2, 16.4], [13, 8.0, 21.0], [4, 14.0, 14.0]], np.float32)


def expected(frames: int) -> np.ndarray:
    """``(N, T, 2)`` (x, y) of :data:`QUERIES` under :data:`~test_match.SHIFT`."""
    start = QUERIES[:, [2, 1]] - QUERIES[:, :1] * np.array(SHIFT)  # (N, 2) where each point is in frame 0
    return start[:, None] + np.arange(frames)[None, :, None] * np.array(SHIFT)


def numbered_clips(n: int, frames: int, reads: list[int]) -> IndexedClips:
    """``n`` clips of ``frames`` 4x4 frames whose pixels hold ``10 * clip + frame``, with per-frame labels; every
    decode is appended to ``reads``."""

    def load(i: int) -> dict:
        reads.append(i)
        t = np.arange(frames)
        video = np.broadcast_to((10 * i + t)[:, None, None, None], (frames, 4, 4, 3)).astype(np.uint8)
        tracks = np.stack([np.broadcast_to(t, (2, frames)), np.full((2, frames), i)], -1).astype(np.float32)
        return {"video": video, "depth": video[..., 0].astype(np.float32), "tracks": tracks,
                "visible": np.ones((2, frames), bool), "intrinsics": np.eye(3, dtype=np.float32), "label": i}

    return IndexedClips("numbers", "test", range(n), load, describe=lambda i: f"clip{i}.mp4",
                        labels={"label": np.arange(n)})


def test_chunk_starts_share_one_frame_and_clamp_the_last() -> None:
    assert chunk_starts(13, 5) == [0, 4, 8]  # 1 + ceil(8 / 4) chunks, each ends where the next starts
    assert chunk_starts(14, 5) == [0, 4, 8, 9]  # the last clamped to T - length
    assert chunk_starts(9, 9) == [0]
    assert chunk_starts(49 * 2, 49) == [0, 48, 49]
    for frames, length in [(13, 5), (14, 5), (17, 2), (50, 7)]:
        starts = chunk_starts(frames, length)
        assert len(starts) == 1 + -(-(frames - length) // (length - 1))
        assert starts[-1] + length == frames
        assert all(b <= a + length - 1 for a, b in zip(starts, starts[1:], strict=False))  # no frame left out
    for bad in (1, 0, 15):
        with pytest.raises(InputError, match=f"chunk={bad}: "):
            chunk_starts(14, bad)


def test_chunked_clips_are_slices_of_the_base_clips() -> None:
    reads: list[int] = []
    base = numbered_clips(3, 14, reads)
    chunks = ChunkedClips(base, 5)
    assert (chunks.frames, chunks.starts, chunks.count, len(chunks)) == (14, [0, 4, 8, 9], 4, 12)
    for i in range(3):
        clip = base[i]
        for k, s in enumerate(chunks.starts):
            c = chunks[i * 4 + k]
            np.testing.assert_array_equal(c["video"], clip["video"][s:s + 5])
            np.testing.assert_array_equal(c["depth"], clip["depth"][s:s + 5])
            np.testing.assert_array_equal(c["tracks"], clip["tracks"][:, s:s + 5])
            assert c["visible"].shape == (2, 5) and c["label"] == i
            np.testing.assert_array_equal(c["intrinsics"], clip["intrinsics"])
        for k in range(2):  # the shared frame: chunk k's last is chunk k + 1's first
            np.testing.assert_array_equal(chunks[i * 4 + k]["video"][-1], chunks[i * 4 + k + 1]["video"][0])
    reads.clear()
    got = chunks.batch([5, 4, 11, 7])
    assert sorted(reads) == [1, 2]  # each base clip decoded once
    assert [int(c["video"][0, 0, 0, 0]) for c in got] == [10 + 4, 10 + 0, 20 + 9, 10 + 9]
    assert chunks.describe(6) == "clip1.mp4 frames 8-12 (chunk 3/4)"
    assert chunks.labels("label").tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert cache_names(chunks) == ("numbers", "test-chunks5") != cache_names(base)
    assert ChunkedClips(base, 5, frames=14).starts == chunks.starts
    with pytest.raises(InputError, match="chunk=15"):
        ChunkedClips(base, 15)


def test_one_chunk_over_the_whole_clip_is_match_grid() -> None:
    feats = torch.randn(9, 4, 4, 8, generator=torch.Generator().manual_seed(0))
    queries = np.c_[np.arange(10) % 9, np.random.default_rng(0).uniform(0, 16, (10, 2))].astype(np.float32)
    args = (queries, (16, 16), 9, [0.05, 0.2], [1.5, 3.0])
    chained = match_chunks([feats], 9, *args)
    whole = match_grid(feats, *args)
    for a, b in zip(chained, whole, strict=True):
        assert torch.equal(a, b)


def chunk_features(field: np.ndarray, length: int, project: bool) -> list[np.ndarray]:
    """Each chunk's slice of ``field`` ``(T, H, W, C)``; with ``project``, each through its own random orthogonal
    map of the channels (a feature space of its own, as from its own forward)."""
    g = np.random.default_rng(3)
    out = []
    for s in chunk_starts(len(field), length):
        part = field[s:s + length]
        rot = np.linalg.qr(g.normal(size=(part.shape[-1],) * 2))[0].astype(np.float32) if project else None
        out.append(part @ rot if project else part)
    return out


@pytest.mark.parametrize("project", [False, True])
def test_chained_tracks_follow_a_shift_forward_and_backward(project: bool) -> None:
    frames, length = 14, 5  # chunks start at 0, 4, 8, 9
    field = smooth_field(frames, SHIFT)
    chunks = chunk_features(field, length, project)
    tracks, peaks = match_chunks(chunks, length, QUERIES, SIZE, frames, [0.003], [3.0], upsample=4)
    err = np.abs(tracks[0, 0].numpy() - expected(frames))  # (N, T, 2)
    # measured: at most 0.04 / 0.06 / 0.08 / 0.14 px for the four queries (one chunk alone: 0.05, test_match.py)
    assert err.max() < 0.2, err.max(axis=(1, 2))  # query 1 (frame 6) chains backward to 0 and forward to 13
    assert np.abs(QUERIES[:, None, [2, 1]] - expected(frames)).max() > 5.0  # static points would be far off
    assert peaks.min() > 0.99  # every chunk matched with its own query feature


def test_chaining_is_what_tracks_across_chunks_of_different_feature_spaces() -> None:
    """The point of chaining: with every chunk's features in a space of its own, the query's feature from its home
    chunk matches nothing in the other chunks, while the chain re-samples the query in each."""
    frames, length = 14, 5
    starts = chunk_starts(frames, length)
    chunks = chunk_features(smooth_field(frames, SHIFT), length, project=True)
    # one query feature against every frame, each frame read from the first chunk holding it
    stitched = np.concatenate([chunks[0]] + [c[starts[k - 1] + length - s:]
                                            for k, (c, s) in enumerate(zip(chunks, starts, strict=True)) if k])
    assert stitched.shape[0] == frames
    first = QUERIES[:1]  # home chunk 0 (frames 0-4)
    naive, naive_peaks = match_grid(stitched, first, SIZE, frames, [0.003], [3.0], upsample=4)
    naive_err = np.abs(naive[0, 0].numpy() - expected(frames)[:1])  # (1, T, 2)
    assert naive_err[:, :length].max() < 0.15  # within the home chunk it tracks
    assert naive_err[:, length:].max(axis=-1).mean() > 3.0  # beyond, the feature spaces differ: lost
    assert naive_peaks[0, length:].max() < 0.9
    chained, _ = match_chunks(chunks, length, first, SIZE, frames, [0.003], [3.0], upsample=4)
    assert np.abs(chained[0, 0].numpy() - expected(frames)[:1]).max() < 0.2


def test_each_setting_chains_its_own_tracks() -> None:
    frames, length = 14, 5
    chunks = chunk_features(smooth_field(frames, SHIFT), length, project=True)
    both, peaks = match_chunks(chunks, length, QUERIES, SIZE, frames, [0.003, 0.05], [3.0])
    assert (both[0, 0] - both[1, 0]).abs().max() > 0.5  # the settings' chains differ
    for i, temp in enumerate([0.003, 0.05]):
        alone, alone_peaks = match_chunks(chunks, length, QUERIES, SIZE, frames, [temp], [3.0])
        torch.testing.assert_close(both[i, 0], alone[0, 0])
        if i == 0:  # the peaks are the first setting's chain
            torch.testing.assert_close(peaks, alone_peaks)


def test_match_cli_chunks_end_to_end(tmp_path, monkeypatch) -> None:
    from diffprobe.cli import main
    from diffprobe.readouts.match import MatchGrid
    from diffprobe.study.store import ResultsStore, match_config_hash

    monkeypatch.chdir(tmp_path)
    world = "probeworld:tiny@train_size=2,val_size=2,test_size=2,num_tracks=4"  # every chained chunk: 9 settings
    args = ["match", "--backbone", "pixels@patch=4", "--dataset", world, "--block", "0", "--cache", "cache", "--quiet",
            "--device", "cpu"]
    chunked = CliRunner().invoke(main, [*args, "--chunk", "3"])
    assert chunked.exit_code == 0, chunked.output
    assert "block 0 t=0 noise seed 0 in chunks of 3 frames" in chunked.output
    assert any((tmp_path / "cache").rglob("test-chunks3"))  # the chunks' own cache entries
    with ResultsStore(tmp_path / "results.sqlite") as store:
        rows = store.query(task="point_tracking", metric="average_jaccard")
    assert [r["config_hash"] for r in rows] == [match_config_hash([0], MatchGrid(chunk=3))]
    assert rows[0]["config_hash"] != match_config_hash([0], MatchGrid())  # --chunk 0's cell
    assert CliRunner().invoke(main, [*args, "--chunk", "3"]).output.startswith("already in results.sqlite")
    for bad in ("1", "999"):  # the tiny clips have 9 frames
        out = CliRunner().invoke(main, [*args, "--chunk", bad])
        assert out.exit_code == 2 and out.output.startswith(f"Error: chunk={bad}: a chunk needs 2 to 9 frames")
        assert out.output.count("\n") == 1, out.output


def test_run_match_groups_chunks_per_clip_within_the_role_limits(tmp_path) -> None:
    from diffprobe.backbones.registry import load_backbone
    from diffprobe.features.cache import FeatureCache
    from diffprobe.readouts.match import MatchGrid
    from diffprobe.tasks.matching import TASK, run_match
    from diffprobe.tasks.roles import task_roles

    backbone = load_backbone("pixels@patch=4", torch.device("cpu")).backbone
    roles, cache, limits = task_roles(TASK, TINY), FeatureCache(tmp_path), {"val": 1, "test": 2}
    grid = MatchGrid(temperatures=(0.03,), windows=(1.0, 2.0), quantiles=(0.2,))

    def run(chunk: int):
        return run_match(backbone, roles, [0], 0.0, [0], MatchGrid.from_dict({**grid.to_dict(), "chunk": chunk}),
                         cache, limits=limits, progress=False)

    whole, one_chunk, chunked = run(0), run(9), run(3)  # tiny clips have 9 frames; chunks of 3: 4 a clip
    assert one_chunk.metrics == whole.metrics and one_chunk.params == whole.params
    assert len(chunked.per_clip) == 2 and chunked.metrics != whole.metrics
    feats = {f"{p.parent.name.rsplit('-', 1)[1]}/{p.name}" for p in (tmp_path / "pixels-p4-u1").glob("*/*")}
    assert feats == {"first1/val", "first2/test", "first1/val-chunks9", "first2/test-chunks9",
                     "first4/val-chunks3", "first8/test-chunks3"}  # limit x 4 chunks of clips
