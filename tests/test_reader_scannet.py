"""The ScanNet reader on a SensReader-layout fixture with real depth (Middlebury 2014 Motorcycle)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")

from fixtures_geometry import (  # noqa: E402
    COLOR_HW,
    DEPTH_HW,
    frame_window,
    motorcycle,
    motorcycle_depth_mm,
    motorcycle_k,
    synthetic_pose,
    write_matrix,
    write_scannet_fixture,
)
from PIL import Image  # noqa: E402

from diffprobe.config import ConfigError  # noqa: E402
from diffprobe.data.dataset import DatasetError  # noqa: E402
from diffprobe.data.readers.scannet import ScanNetOptions, open_scannet, select_windows, tile_windows  # noqa: E402
from diffprobe.data.registry import open_dataset  # noqa: E402
from diffprobe.spec import DatasetSpec

SCENES = ("scene0000_00", "scene0001_00")


def scannet(root: Path, **options) -> object:
    return open_scannet(DatasetSpec("scannet", str(root), tuple(options.items())))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two scenes of 12 frames; frame 7 of the second scene lost tracking."""
    return write_scannet_fixture(tmp_path_factory.mktemp("scannet"), SCENES, untracked={SCENES[1]: [7]})


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """One scene of 6 frames, for tests that break files."""
    return write_scannet_fixture(tmp_path / "sn", SCENES[:1], frames=6)


def test_fields_shapes_and_untracked_windows(root: Path) -> None:
    ds = open_dataset(f"scannet:{root}@frames=3,stride=2,size=32")
    assert ds.splits == ("all",) and ds.fields == {"video", "depth", "camera", "intrinsics"}
    assert ds.label_spaces == {} and (ds.frames, ds.height, ds.width) == (3, 32, 32)
    clips = ds.clips("all")
    # windows of span 5 at 0 and 5 in each scene; scene 1's [5, 7, 9] has the -inf pose of frame 7
    assert [clips.describe(i) for i in range(len(clips))] == [
        f"{root / SCENES[0]} frames [0, 2, 4]", f"{root / SCENES[0]} frames [5, 7, 9]",
        f"{root / SCENES[1]} frames [0, 2, 4]"]
    assert ds.untracked == {"all": 1}
    clip = clips[1]
    assert set(clip) == ds.fields
    assert clip["video"].shape == (3, 32, 32, 3) and clip["video"].dtype == np.uint8
    assert clip["depth"].shape == (3, 32, 32) and clip["depth"].dtype == np.float32
    assert clip["camera"].shape == (3, 4, 4) and clip["camera"].dtype == np.float32
    assert clip["intrinsics"].shape == (3, 3) and clip["intrinsics"].dtype == np.float32


def test_depth_reads_back_in_metres_in_numeric_frame_order(root: Path) -> None:
    """resize=none: the depth grid as written; frame 10 is frame 10 (not the 10th name in lexicographic order)."""
    ds = scannet(root, frames=3, stride=5, resize="none")
    assert (ds.height, ds.width) == DEPTH_HW
    clip = ds.clips("all")[0]  # frames 0, 5, 10 of scene 0
    for t, i in enumerate((0, 5, 10)):
        png = np.asarray(Image.open(root / SCENES[0] / "depth" / f"{i}.png"))
        np.testing.assert_array_equal(clip["depth"][t], png.astype(np.float32) / 1000)
        true_m = motorcycle_depth_mm(i) / 1000  # the depth from the disparity, before the mm rounding
        assert np.abs(clip["depth"][t] - true_m).max() <= 0.0005 + 1e-6
        assert ((clip["depth"][t] == 0) == (true_m == 0)).all()  # no measurement stays 0
    assert 0 < (clip["depth"] == 0).mean() < 0.3 and clip["depth"][clip["depth"] > 0].min() > 0.5
    assert not np.array_equal(clip["depth"][1], clip["depth"][2])


@pytest.mark.parametrize("resize", ["crop", "stretch"])
def test_depth_survives_the_resize(root: Path, resize: str) -> None:
    size = 32
    clip = scannet(root, frames=3, stride=5, size=size, resize=resize).clips("all")[0]
    h, w = DEPTH_HW
    if resize == "crop":
        rh, rw = size, round(w * size / h)
        ox = (rw - size) // 2
    else:
        rh, rw, ox = size, size, 0
    cx = (np.arange(size) + ox + 0.5) * w / rw  # each output centre in source pixels
    cy = (np.arange(size) + 0.5) * h / rh
    for t, i in enumerate((0, 5, 10)):
        src = np.round(motorcycle_depth_mm(i)) / 1000
        # nearest: the source pixel holding the centre (either neighbour where the centre falls on their border)
        near = [src[np.ix_(np.floor(cy + e).astype(int), np.floor(cx + e).astype(int))] for e in (-1e-9, 1e-9)]
        assert (np.isclose(clip["depth"][t], near[0], atol=1e-6) | np.isclose(clip["depth"][t], near[1], atol=1e-6)
                ).all()


def test_video_is_on_the_depth_grid(root: Path) -> None:
    """The colour frame lands on the depth pixels: it matches the full-size Motorcycle view resampled straight to
    the output grid far better than the same view shifted by one output pixel."""
    size = 32
    clip = scannet(root, frames=3, stride=5, size=size).clips("all")[0]
    rw = round(DEPTH_HW[1] * size / DEPTH_HW[0])
    ox = (rw - size) // 2
    for t, i in enumerate((0, 5, 10)):
        view = Image.fromarray(motorcycle()[0]).crop(frame_window(i)).resize((rw, size), Image.BILINEAR)
        ref = np.asarray(view, np.float64)
        out = clip["video"][t].astype(np.float64)
        aligned = np.abs(out - ref[:, ox:ox + size]).mean()
        shifted = min(np.abs(out - ref[:, ox + d:ox + d + size]).mean() for d in (-1, 1))
        assert aligned < 3 and aligned < 0.25 * shifted, (aligned, shifted)


@pytest.mark.parametrize("resize", ["crop", "stretch", "none"])
def test_intrinsics_and_camera_follow_the_geometry(root: Path, resize: str) -> None:
    size = 40
    ds = scannet(root, frames=3, stride=2, size=size, resize=resize)
    clip = ds.clips("all")[2]  # scene 1, frames 0, 2, 4
    k_src = motorcycle_k(DEPTH_HW)
    h, w = DEPTH_HW
    if resize == "crop":
        sx = sy = size / h
        rw = round(w * sx)
        sx, ox = rw / w, (rw - size) // 2
    elif resize == "stretch":
        sx, sy, ox = size / w, size / h, 0
    else:
        sx = sy = 1.0
        ox = 0
    pts = np.array([[0.3, -0.2, 2.0], [-0.5, 0.4, 3.5], [0.0, 0.0, 1.0]])  # camera frame
    src = (k_src @ pts.T).T
    src = src[:, :2] / src[:, 2:]
    want = np.stack([src[:, 0] * sx - ox, src[:, 1] * sy], axis=1)
    got = (clip["intrinsics"].astype(np.float64) @ pts.T).T
    np.testing.assert_allclose(got[:, :2] / got[:, 2:], want, atol=1e-3)
    for t, i in enumerate((0, 2, 4)):
        pose = synthetic_pose(i + 100)  # camera-to-world written for scene 1
        np.testing.assert_allclose(clip["camera"][t].astype(np.float64) @ pose, np.eye(4), atol=1e-5)


def test_back_projected_depth_lands_on_the_source_point(root: Path) -> None:
    """An output pixel's depth and the output K give the camera-frame point that the source K and source depth
    give at the mapped source pixel (depth and intrinsics scale together)."""
    clip = scannet(root, frames=3, stride=5, size=32).clips("all")[0]
    k_out = clip["intrinsics"].astype(np.float64)
    k_src = motorcycle_k(DEPTH_HW)
    src = np.round(motorcycle_depth_mm(0)) / 1000
    yy, xx = np.nonzero(clip["depth"][0] > 0)
    z = clip["depth"][0][yy, xx].astype(np.float64)
    rays = np.linalg.inv(k_out) @ np.stack([xx + 0.5, yy + 0.5, np.ones_like(z)])
    uv = k_src @ (rays * z)
    u, v = uv[0] / uv[2], uv[1] / uv[2]
    # nearest resampling: the source pixel holding the mapped centre gave the depth
    np.testing.assert_allclose(src[np.floor(v).astype(int), np.floor(u).astype(int)], z, atol=1e-6)


def test_windows_first_center_and_cap() -> None:
    cands = tile_windows(30, 3, 2, "first")
    assert [w.tolist() for w in cands] == [[0, 2, 4], [5, 7, 9], [10, 12, 14], [15, 17, 19], [20, 22, 24],
                                           [25, 27, 29]]
    centred = tile_windows(30, 3, 2, "center")
    assert [12, 14, 16] in [w.tolist() for w in centred]  # the window frame_indices(start=center) takes
    assert select_windows(centred, 30, "first", "center")[0].tolist() == [12, 14, 16]
    assert [w[0] for w in select_windows(cands, 30, "all", "first", cap=3)] == [0, 10, 25]
    assert tile_windows(4, 3, 2, "first") == []


def test_windows_options(root: Path) -> None:
    first = scannet(root, frames=3, stride=2, windows="first").clips("all")
    assert [first.describe(i) for i in range(len(first))] == [f"{root / s} frames [0, 2, 4]" for s in SCENES]
    capped = scannet(root, frames=2, stride=1, max_clips_per_scene=2).clips("all")
    assert [capped.describe(i) for i in range(len(capped))] == [
        f"{root / SCENES[0]} frames [0, 1]", f"{root / SCENES[0]} frames [10, 11]",
        f"{root / SCENES[1]} frames [0, 1]", f"{root / SCENES[1]} frames [10, 11]"]  # [6, 7] was untracked


def test_splits_from_split_files(tmp_path: Path) -> None:
    root = write_scannet_fixture(tmp_path / "sn", SCENES, frames=3,
                                 splits={"train": [SCENES[0]], "val": [SCENES[1]]})
    ds = scannet(root, frames=3, stride=1)
    assert ds.splits == ("train", "val")
    assert [len(ds.clips(s)) for s in ds.splits] == [1, 1]
    (root / "scannetv2_test.txt").write_text("scene0999_00\n")
    with pytest.raises(DatasetError, match="scene0999_00"):
        scannet(root, frames=3, stride=1)
    ds = scannet(root, frames=3, stride=1, on_bad="skip")
    assert ds.splits == ("train", "val", "test") and len(ds.clips("test")) == 0
    assert ds.skipped["test"][0]["source"] == str(root / "scene0999_00")


def test_identity_changes_with_a_file(small: Path) -> None:
    a = scannet(small, frames=3, stride=2).identity
    assert scannet(small, frames=3, stride=2).identity == a
    assert scannet(small, frames=3, stride=1).identity != a
    pose = small / SCENES[0] / "pose" / "2.txt"
    write_matrix(pose, synthetic_pose(50))
    b = scannet(small, frames=3, stride=2).identity
    assert b != a
    jpg = small / SCENES[0] / "color" / "4.jpg"
    st = jpg.stat()
    os.utime(jpg, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert scannet(small, frames=3, stride=2).identity != b


def test_missing_depth_and_pose_files(small: Path) -> None:
    (small / SCENES[0] / "depth" / "2.png").unlink()
    with pytest.raises(DatasetError, match=r"depth/2\.png: no such file"):
        scannet(small, frames=3, stride=2)
    ds = scannet(small, frames=3, stride=1, on_bad="skip")  # windows [0,1,2] (bad) and [3,4,5]
    assert ds.clips("all").describe(0) == f"{small / SCENES[0]} frames [3, 4, 5]"
    assert len(ds.clips("all")) == 1 and "depth/2.png" in ds.skipped["all"][0]["error"]
    (small / SCENES[0] / "pose" / "4.txt").unlink()
    with pytest.raises(DatasetError, match=r"pose/4\.txt: no such file \(the pose of colour frame 4\)"):
        scannet(small, frames=2, stride=4)  # the one window [0, 4] (no frame 2)


def test_malformed_pose_and_intrinsics(small: Path) -> None:
    pose = small / SCENES[0] / "pose" / "1.txt"
    write_matrix(pose, synthetic_pose(1)[:3])
    with pytest.raises(DatasetError, match=r"pose/1\.txt: pose must be a 4x4 matrix"):
        scannet(small, frames=3, stride=1)
    pose.write_text("1 0 0 0\n0 1 0 0\n0 0 1 zero\n0 0 0 1\n")
    with pytest.raises(DatasetError, match=r"pose/1\.txt: pose is not a matrix of numbers"):
        scannet(small, frames=3, stride=1)
    write_matrix(pose, synthetic_pose(1))
    k = small / SCENES[0] / "intrinsic" / "intrinsic_depth.txt"
    write_matrix(k, motorcycle_k(DEPTH_HW))
    with pytest.raises(DatasetError, match=r"intrinsic_depth\.txt: intrinsics must be a 4x4 matrix"):
        scannet(small, frames=3, stride=1)
    ds = scannet(small, frames=3, stride=1, on_bad="skip")
    assert ds.splits == ("all",) and len(ds.clips("all")) == 0
    assert "intrinsic_depth.txt" in ds.skipped["all"][0]["error"]


def test_bad_pixels_at_read_time(small: Path) -> None:
    depth = small / SCENES[0] / "depth" / "4.png"
    Image.fromarray(np.zeros(DEPTH_HW, np.uint8)).save(depth)  # an 8-bit PNG
    ds = scannet(small, frames=3, stride=1)
    with pytest.raises(DatasetError, match=r"depth/4\.png: depth PNG must be 16-bit"):
        ds.clips("all")[1]
    jpg = small / SCENES[0] / "color" / "1.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DatasetError, match=r"color/1\.jpg"):
        scannet(small, frames=3, stride=1).clips("all")[0]
    ds = scannet(small, frames=3, stride=1, on_bad="skip")
    assert len(ds.clips("all")) == 0 and [s["index"] for s in ds.skipped["all"]] == [0, 1]


def test_short_scene_and_odd_names(small: Path) -> None:
    with pytest.raises(DatasetError, match=rf"{SCENES[0]}: only 6 frame\(s\), needs 7 for frames=4 at stride=2"):
        scannet(small, frames=4, stride=2)
    shutil.copy(small / SCENES[0] / "color" / "0.jpg", small / SCENES[0] / "color" / "frame.jpg")
    with pytest.raises(DatasetError, match=r"color/frame\.jpg: colour frame name is not a frame number"):
        scannet(small, frames=3, stride=1)


def test_colour_size_differs_within_a_clip(small: Path) -> None:
    jpg = small / SCENES[0] / "color" / "2.jpg"
    Image.open(jpg).resize((COLOR_HW[1] // 2, COLOR_HW[0] // 2)).save(jpg)
    with pytest.raises(DatasetError, match=r"color/2\.jpg: 48x65 pixels, but 0\.jpg"):
        scannet(small, frames=3, stride=1).clips("all")[0]


def test_unknown_option_lists_known_ones(small: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['frame'\].*max_clips_per_scene"):
        open_dataset(f"scannet:{small}@frame=3")
    with pytest.raises(ConfigError, match="max_clips_per_scene"):
        ScanNetOptions(max_clips_per_scene=-1)
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(f"scannet:{small / 'nothing'}")
