"""The unlabelled ``videos:DIR`` / ``images:DIR`` readers on nested folders of real footage and photos."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("skvideo")
pytest.importorskip("skimage")

from fixtures_video import (  # noqa: E402
    IMAGE_FOLDER_FILES,
    VIDEO_FOLDER_FILES,
    decoded_index,
    real_frames,
    truncate,
    write_image_folder_fixture,
    write_index_video,
    write_video,
    write_video_folder_fixture,
)
from PIL import Image  # noqa: E402

from diffprobe.config import ConfigError  # noqa: E402
from diffprobe.data.dataset import DatasetError  # noqa: E402
from diffprobe.data.decode import read_video  # noqa: E402
from diffprobe.data.readers.folders import ImagesDataset, VideosDataset, open_images, open_videos  # noqa: E402
from diffprobe.data.registry import open_dataset  # noqa: E402
from diffprobe.spec import DatasetSpec


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video_folder_fixture(tmp_path_factory.mktemp("videos") / "clips")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder_fixture(tmp_path_factory.mktemp("images") / "stills")


def open_v(path: Path, **options: object) -> VideosDataset:
    return open_videos(DatasetSpec("videos", str(path), tuple({"frames": 4, "size": 16, **options}.items())))


def test_videos_first_window(videos: Path) -> None:
    ds = open_v(videos)
    assert ds.splits == ("all",) and ds.fields == {"video"} and ds.label_spaces == {}
    assert (ds.frames, ds.height, ds.width) == (4, 16, 16)
    seq = ds.clips("all")
    assert [seq.describe(i) for i in range(len(seq))] == [str(videos / rel) for rel in VIDEO_FOLDER_FILES]  # sorted
    for i in range(len(seq)):
        clip = seq[i]
        assert set(clip) == {"video"} and clip["video"].dtype == np.uint8 and clip["video"].shape == (4, 16, 16, 3)


def test_videos_defaults_and_too_short(videos: Path) -> None:
    ds = open_videos(DatasetSpec("videos", str(videos), ()))
    assert (ds.opts.frames, ds.opts.stride, ds.opts.size, ds.opts.resize, ds.opts.start, ds.opts.windows) == (
        16, 1, 128, "crop", "first", "first")
    seq = ds.clips("all")
    assert seq[1]["video"].shape == (16, 128, 128, 3)  # a/clip.MP4 has 20 frames
    with pytest.raises(DatasetError, match=re.escape(f"{videos / 'a/b/deep.webm'}: only 14 frame(s), needs 16 "
                                                     "for frames=16 at stride=1")):
        seq[0]
    skip = open_videos(DatasetSpec("videos", str(videos), tuple({"on_bad": "skip"}.items())))
    assert len(skip.clips("all")) == 1
    assert [s["source"] for s in skip.skipped["all"]] == [str(videos / r) for r in ("a/b/deep.webm", "b.mkv",
                                                                                    "c.avi")]


def test_windows_all(videos: Path) -> None:
    ds = open_v(videos, windows="all")
    seq = ds.clips("all")
    counts = [n // 4 for _, n in VIDEO_FOLDER_FILES.values()]  # 14, 20, 9, 12 frames -> 3, 5, 2, 3 windows
    assert len(seq) == sum(counts)
    assert seq.describe(0) == f"{videos / 'a/b/deep.webm'} frames 0..3"
    assert seq.describe(counts[0] + counts[1] - 1) == f"{videos / 'a/clip.MP4'} frames 16..19"
    with pytest.raises(ConfigError, match="windows=all tiles each video from its first frame"):
        open_v(videos, windows="all", start="center")


@pytest.mark.parametrize(("options", "expected"), [
    ({"frames": 4, "stride": 2, "windows": "all"}, [[0, 2, 4, 6], [7, 9, 11, 13]]),
    ({"frames": 5, "windows": "all"}, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]),
    ({"frames": 3, "stride": 4, "start": "center"}, [[5, 9, 13]]),
    ({"frames": 3, "stride": 4}, [[0, 4, 8]]),
])
def test_frame_sampling(tmp_path: Path, options: dict, expected: list[list[int]]) -> None:
    write_index_video(tmp_path / "v" / "index.mp4")
    seq = open_videos(DatasetSpec("videos", str(tmp_path / "v"), tuple({"size": 16, **options}.items()))).clips("all")
    assert [decoded_index(seq[i]["video"]).tolist() for i in range(len(seq))] == expected


def test_crop_matches_pillow(videos: Path) -> None:
    clip = open_v(videos, frames=2, stride=3, size=30).clips("all")[1]["video"]  # a/clip.MP4, 48 x 64
    raw = read_video(videos / "a/clip.MP4", [0, 3])
    for frame, out in zip(raw, clip, strict=True):
        ref = Image.fromarray(frame).resize((40, 30), Image.BILINEAR).crop((5, 0, 35, 30))
        np.testing.assert_array_equal(out, np.asarray(ref))
    assert np.abs(raw.astype(int) - real_frames("carphone_pristine.mp4")[[0, 3]]).mean() < 4
    none = open_v(videos, resize="none")
    assert (none.height, none.width) == (48, 64) and none.clips("all")[2]["video"].shape == (4, 48, 64, 3)


def test_bad_videos(videos: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(videos, tmp_path / "clips"))
    bad = truncate(root / "b.mkv", keep=0.3)
    (root / "c.avi").write_bytes(b"RIFF not really an avi")
    with pytest.raises(DatasetError, match=re.escape(str(bad))):
        open_v(root).clips("all")[2]
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'b.mkv'}")):
        open_v(root, windows="all")  # lengths are read at open
    ds = open_v(root, windows="all", on_bad="skip", frames=6)
    assert len(ds.clips("all")) == 2 + 3  # deep.webm: 2 windows of 6, clip.MP4: 3
    assert [(s["index"], s["source"]) for s in ds.skipped["all"]] == [(2, str(bad)), (3, str(root / "c.avi"))]
    (root / "b.mkv").unlink()
    (root / "c.avi").unlink()
    write_video(root / "short.mp4", real_frames("bikes.mp4", count=3))
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'short.mp4'}: only 3 frame(s), needs 6")):
        open_v(root, windows="all", frames=6, on_bad="error")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no videos"):
        open_v(empty)


def test_images(images: Path, tmp_path: Path) -> None:
    ds = open_images(DatasetSpec("images", str(images), tuple({"size": 20}.items())))
    assert ds.splits == ("all",) and ds.fields == {"video"} and (ds.frames, ds.height, ds.width) == (1, 20, 20)
    seq = ds.clips("all")
    assert [seq.describe(i) for i in range(len(seq))] == [str(images / rel) for rel in IMAGE_FOLDER_FILES]
    clip = seq[1]  # x/z.PNG, 30 x 50
    ref = Image.open(images / "x/z.PNG").convert("RGB").resize((33, 20), Image.BILINEAR).crop((6, 0, 26, 20))
    assert clip["video"].shape == (1, 20, 20, 3) and clip["video"].dtype == np.uint8
    np.testing.assert_array_equal(clip["video"][0], np.asarray(ref))
    with pytest.raises(ConfigError, match=re.escape("known keys are ['on_bad', 'resize', 'size']")):
        open_images(DatasetSpec("images", str(images), tuple({"stride": 2}.items())))
    root = Path(shutil.copytree(images, tmp_path / "stills"))
    (root / "y.jpg").write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'y.jpg'}: cannot decode image")):
        open_images(DatasetSpec("images", str(root), ())).clips("all")[2]
    skip = open_images(DatasetSpec("images", str(root), tuple({"on_bad": "skip"}.items())))
    assert len(skip.clips("all")) == 2 and skip.skipped["all"][0]["source"] == str(root / "y.jpg")


def test_identity_and_registry(videos: Path, images: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(videos, tmp_path / "clips"))
    first = open_v(root).identity
    assert open_v(root).identity == first and open_v(root, windows="all").identity != first
    write_video(root / "a/clip.MP4", real_frames("bikes.mp4"))
    assert open_v(root).identity != first
    ds = open_dataset(f"videos:{videos}@frames=4,size=16")
    assert isinstance(ds, VideosDataset) and ds.identity == open_v(videos).identity
    assert ds.identity.startswith("videos-clips-")
    ds = open_dataset(f"images:{images}@size=20,resize=stretch")
    assert isinstance(ds, ImagesDataset) and ds.clips("all")[0]["video"].shape == (1, 20, 20, 3)
    with pytest.raises(ConfigError, match=re.escape("unknown key(s) ['window']; known keys are")):
        open_dataset(f"videos:{videos}@window=all")
