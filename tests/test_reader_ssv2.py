"""The Something-Something v2 reader on a tiny fixture in the official layout (JSONs + VP9 .webm videos)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("skvideo")

from fixtures_video import (  # noqa: E402
    SSV2_ENTRIES,
    SSV2_LABELS,
    VIDEO_FRAMES,
    decoded_index,
    real_frames,
    truncate,
    write_index_video,
    write_ssv2_fixture,
    write_video,
)
from PIL import Image  # noqa: E402

from diffprobe.config import ConfigError  # noqa: E402
from diffprobe.data.dataset import DatasetError  # noqa: E402
from diffprobe.data.decode import read_video  # noqa: E402
from diffprobe.data.readers.ssv2 import SSv2Dataset, open_ssv2  # noqa: E402
from diffprobe.data.registry import open_dataset  # noqa: E402
from diffprobe.spec import DatasetSpec  # noqa: E402

SMALL = {"frames": 4, "stride": 2, "size": 32}
VIDEOS = "20bn-something-something-v2"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ssv2_fixture(tmp_path_factory.mktemp("ssv2") / "ssv2")


@pytest.fixture
def root(source: Path, tmp_path: Path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(source, tmp_path / "ssv2"))


def open_s(path: Path, **options: object) -> SSv2Dataset:
    return open_ssv2(DatasetSpec("ssv2", str(path), tuple({**SMALL, **options}.items())))


def expected_actions(stem: str) -> list[int]:
    return [SSV2_LABELS.index(t.replace("[", "").replace("]", "")) for _, t, _, _, _ in SSV2_ENTRIES[stem]]


def video_path(root: Path, stem: str, i: int) -> Path:
    return root / VIDEOS / f"{SSV2_ENTRIES[stem][i][0]}.webm"


def test_fixture_is_real_webm(source: Path) -> None:
    with av.open(str(video_path(source, "train", 0))) as container:
        assert "webm" in container.format.name or "matroska" in container.format.name
        assert container.streams.video[0].codec_context.name in ("vp9", "vp8", "libvpx-vp9", "libvpx")


def test_fields_splits_labels(source: Path) -> None:
    ds = open_s(source)
    assert ds.splits == ("train", "val")  # the test JSON has no labels: no test split
    assert ds.fields == {"video", "action"}
    assert ds.label_spaces == {"action": SSV2_LABELS}  # by numeric id: 0, 1, 2, 10
    assert (ds.frames, ds.height, ds.width) == (4, 32, 32)
    for split, stem in (("train", "train"), ("val", "validation")):
        seq = ds.clips(split)
        assert seq.labels("action").tolist() == expected_actions(stem)
        assert [seq.describe(i) for i in range(len(seq))] == [str(video_path(source, stem, i))
                                                              for i in range(len(SSV2_ENTRIES[stem]))]
    clip = ds.clips("val")[0]
    assert set(clip) == {"video", "action"}
    assert clip["video"].dtype == np.uint8 and clip["video"].shape == (4, 32, 32, 3)
    assert type(clip["action"]) is int and clip["action"] == SSV2_LABELS.index("Approaching something with your "
                                                                               "camera")


def test_defaults_and_too_short_video(source: Path) -> None:
    ds = open_ssv2(DatasetSpec("ssv2", str(source), ()))
    assert (ds.opts.frames, ds.opts.stride, ds.opts.size, ds.opts.resize, ds.opts.start) == (16, 2, 128, "crop",
                                                                                             "center")
    path = video_path(source, "train", 0)
    with pytest.raises(DatasetError, match=rf"{path}: only {VIDEO_FRAMES} frame\(s\), needs 31 for frames=16 at "
                                           "stride=2"):
        ds.clips("train")[0]


@pytest.mark.parametrize(("start", "frames", "stride", "first"), [("center", 3, 2, 7), ("first", 5, 2, 0),
                                                                  ("center", 10, 2, 0), ("center", 2, 1, 9)])
def test_frame_sampling(root: Path, start: str, frames: int, stride: int, first: int) -> None:
    write_index_video(video_path(root, "train", 1))  # a VP9 .webm: its length comes from demuxing
    clip = open_s(root, frames=frames, stride=stride, start=start).clips("train")[1]
    assert decoded_index(clip["video"]).tolist() == [first + stride * i for i in range(frames)]


def test_crop_matches_pillow(source: Path) -> None:
    path = video_path(source, "validation", 1)
    clip = open_s(source, frames=2, stride=5, size=24).clips("val")[1]
    raw = read_video(path, [7, 12])  # centred: a span of 6 frames starts at (20 - 6) // 2; (2, 48, 64, 3)
    for frame, out in zip(raw, clip["video"], strict=True):
        ref = Image.fromarray(frame).resize((32, 24), Image.BILINEAR).crop((4, 0, 28, 24))  # 64 * 24 / 48 = 32
        np.testing.assert_array_equal(out, np.asarray(ref))
    assert np.abs(raw[0].astype(int) - real_frames("carphone_pristine.mp4", first=40)[7]).mean() < 4


def test_videos_folder_variant(root: Path) -> None:
    (root / VIDEOS).rename(root / "videos")
    ds = open_s(root)
    assert ds.clips("train").describe(0) == str(root / "videos" / f"{SSV2_ENTRIES['train'][0][0]}.webm")
    (root / "videos").rename(root / "elsewhere")
    with pytest.raises(DatasetError, match=f"{root}: no video folder"):
        open_s(root)


def test_template_missing_from_labels(root: Path) -> None:
    labels = root / "something-something-v2-labels.json"
    data = json.loads(labels.read_text())
    del data["Holding something next to something"]
    labels.write_text(json.dumps(data))
    train = root / "something-something-v2-train.json"
    with pytest.raises(DatasetError, match=re.escape(f"{train}: entry 0 (id 78687): template 'Holding something next "
                                                     f"to something' is not in something-something-v2-labels.json")):
        open_s(root)
    labels.write_text(json.dumps({**data, "Holding something next to something": "2"}))
    with pytest.raises(DatasetError, match=f"{labels}: id 2 given to both"):
        open_s(root)
    labels.write_text(json.dumps({**data, "Holding something next to something": "3"}))
    train.write_text(json.dumps([{"label": "no id"}]))
    with pytest.raises(DatasetError, match=f"{train}: entry 0 is not an object with 'id' and 'template'"):
        open_ssv2(DatasetSpec("ssv2", str(root), ()))


def test_missing_video_error_and_skip(root: Path) -> None:
    gone = video_path(root, "validation", 0)
    gone.unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{gone}: no such video (entry 0 of")):
        open_s(root)
    ds = open_s(root, on_bad="skip")
    assert ds.clips("val").labels("action").tolist() == expected_actions("validation")[1:]
    assert ds.skipped == {"val": [{"index": 0, "source": str(gone), "error": ds.skipped["val"][0]["error"]}]}


def test_truncated_video(root: Path) -> None:
    bad = truncate(video_path(root, "train", 2), keep=0.4)  # a cut .webm reads as a shorter video
    with pytest.raises(DatasetError, match=str(bad)):
        open_s(root, frames=10).clips("train")[2]
    ds = open_s(root, frames=10, on_bad="skip")
    assert len(ds.clips("train")) == 2 and ds.skipped["train"][0]["source"] == str(bad)


def test_identity(root: Path) -> None:
    first = open_s(root).identity
    assert open_s(root).identity == first and open_s(root, stride=1).identity != first
    write_video(video_path(root, "train", 0), real_frames("bikes.mp4", first=50), fps=12)
    assert open_s(root).identity != first


def test_options_and_registry(source: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['split'\].*known keys are .*'frames'"):
        open_ssv2(DatasetSpec("ssv2", str(source), tuple({"split": "test"}.items())))
    ds = open_dataset(f"ssv2:{source}@frames=4,stride=2,size=32")
    assert isinstance(ds, SSv2Dataset) and ds.identity == open_s(source).identity
