"""The class-folder image reader on tiny fixtures of scikit-image photos (split and flat layouts)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")

from fixtures_video import (  # noqa: E402
    IMAGEFOLDER_FILES,
    IMAGEFOLDER_LABELS,
    real_image,
    truncate,
    write_imagefolder_fixture,
)
from PIL import Image  # noqa: E402

from diffprobe.config import ConfigError  # noqa: E402
from diffprobe.data.dataset import DatasetError  # noqa: E402
from diffprobe.data.readers.imagefolder import ImageFolderDataset, open_imagefolder  # noqa: E402
from diffprobe.data.registry import open_dataset  # noqa: E402
from diffprobe.spec import DatasetSpec


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagefolder_fixture(tmp_path_factory.mktemp("imagefolder") / "images")


@pytest.fixture
def root(source: Path, tmp_path: Path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(source, tmp_path / "images"))


def open_i(path: Path, **options: object) -> ImageFolderDataset:
    return open_imagefolder(DatasetSpec("imagefolder", str(path), tuple({"size": 24, **options}.items())))


def expected(split: str) -> tuple[list[str], list[int]]:
    """Files in reader order (class folders sorted, then names sorted) and their labels."""
    rows = sorted(IMAGEFOLDER_FILES[split], key=lambda r: (r[0], r[2]))
    return [f"{r[0]}/{r[2]}" for r in rows], [IMAGEFOLDER_LABELS.index(r[0]) for r in rows]


def test_split_layout(source: Path) -> None:
    ds = open_i(source)
    assert ds.splits == ("train", "val")
    assert ds.fields == {"video", "label"}
    assert ds.label_spaces == {"label": IMAGEFOLDER_LABELS}  # the union: "rocket" is only in val
    assert (ds.frames, ds.height, ds.width) == (1, 24, 24)
    for split in ds.splits:
        seq = ds.clips(split)
        files, labels = expected(split)
        assert [seq.describe(i) for i in range(len(seq))] == [str(source / split / f) for f in files]  # no README
        assert seq.labels("label").tolist() == labels
        for i in range(len(seq)):
            clip = seq[i]
            assert set(clip) == {"video", "label"} and type(clip["label"]) is int and clip["label"] == labels[i]
            assert clip["video"].dtype == np.uint8 and clip["video"].shape == (1, 24, 24, 3)  # grey .bmp -> RGB


def test_flat_layout(tmp_path: Path) -> None:
    root = write_imagefolder_fixture(tmp_path / "flat", splits=False)
    ds = open_i(root)
    assert ds.splits == ("all",) and ds.label_spaces == {"label": IMAGEFOLDER_LABELS}
    seq = ds.clips("all")
    assert len(seq) == sum(len(v) for v in IMAGEFOLDER_FILES.values())
    assert seq.labels("label").tolist() == sorted(seq.labels("label").tolist())


def test_crop_and_stretch_match_pillow(source: Path) -> None:
    path = source / "train" / "cup" / "c1.jpg"  # 40 x 60
    index = expected("train")[0].index("cup/c1.jpg")
    img = Image.open(path).convert("RGB")
    crop = open_i(source, size=20).clips("train")[index]["video"][0]
    ref = img.resize((30, 20), Image.BILINEAR).crop((5, 0, 25, 20))
    np.testing.assert_array_equal(crop, np.asarray(ref))
    stretch = open_i(source, size=20, resize="stretch").clips("train")[index]["video"][0]
    np.testing.assert_array_equal(stretch, np.asarray(img.resize((20, 20), Image.BILINEAR)))
    # the real photo survives (PNG is lossless)
    png = open_i(source, resize="none").clips("val")
    with pytest.raises(DatasetError, match=re.escape(f"{source / 'val' / 'rocket' / 'r1.jpeg'}: is 60x40 pixels, "
                                                     "but resize=none needs every clip at the first clip's 30x45")):
        png[1]
    assert open_i(source, resize="none").height == 30  # train/cat/n01.JPEG comes first
    val_png = Image.open(source / "val" / "cup" / "c9.PNG")
    np.testing.assert_array_equal(np.asarray(val_png), real_image("coffee", (48, 64)))


def test_options(source: Path) -> None:
    opts = open_imagefolder(DatasetSpec("imagefolder", str(source))).opts
    assert (opts.size, opts.resize) == (128, "crop")
    with pytest.raises(ConfigError, match=re.escape("unknown key(s) ['frames']; known keys are ['on_bad', 'resize', "
                                                    "'size']")):
        open_imagefolder(DatasetSpec("imagefolder", str(source), tuple({"frames": 1}.items())))
    ds = open_dataset(f"imagefolder:{source}@size=24")
    assert isinstance(ds, ImageFolderDataset) and ds.identity == open_i(source).identity


def test_corrupt_image_error_and_skip(root: Path) -> None:
    bad = truncate(root / "train" / "cat" / "n01.JPEG", keep=0.3)
    (root / "train" / "cup" / "c1.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match=re.escape(f"{bad}: cannot decode image")):
        open_i(root).clips("train")[0]
    ds = open_i(root, on_bad="skip")
    seq = ds.clips("train")
    assert len(seq) == 3
    assert [s["source"] for s in ds.skipped["train"]] == [str(bad), str(root / "train" / "cup" / "c1.jpg")]
    assert seq.labels("label").tolist() == [0, 2, 2]


def test_layout_errors(root: Path, tmp_path: Path) -> None:
    (root / "extra_class").mkdir()
    with pytest.raises(DatasetError, match=r"split folders \['train', 'val'\] beside other folders \['extra_class'\]"):
        open_i(root)
    shutil.rmtree(root / "extra_class")
    shutil.copy(root / "val" / "cup" / "c9.PNG", root / "val" / "loose.png")
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'val' / 'loose.png'}: image directly in")):
        open_i(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        open_i(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no such file"):
        open_i(tmp_path / "nowhere")


def test_identity(root: Path) -> None:
    first = open_i(root)
    assert open_i(root).identity == first.identity and open_i(root, size=32).identity != first.identity
    Image.fromarray(real_image("chelsea", (30, 46))).save(root / "train" / "cat" / "n01.JPEG")
    second = open_i(root)
    assert second.identity != first.identity
    (root / "val" / "zebra").mkdir()  # an empty class folder: a new label space, a new identity
    third = open_i(root)
    assert third.label_spaces["label"] == (*IMAGEFOLDER_LABELS, "zebra") and third.identity != second.identity
