"""Bad data is found early and never silently: ``diffprobe data info`` reads and checks clips before compute is
spent (zero-byte, damaged and too-short videos, TAP-Vid points in pixels), ``on_bad=skip`` lists every clip it left
out with its reason, ``skipped.json`` is merged by dataset spec in the folder the caller names, PyAV's errno numbers
never reach a message, and ``data preview`` of class folders is a bounded grid that shows every class."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("skvideo")
pytest.importorskip("skimage")

import fixtures_geometry  # noqa: E402
import fixtures_tracking  # noqa: E402
import fixtures_video  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from fixtures_tracking import write_tapvid_davis_fixture  # noqa: E402
from fixtures_video import real_frames, real_image, truncate, write_video  # noqa: E402
from PIL import Image  # noqa: E402

from diffprobe.cli import main  # noqa: E402
from diffprobe.data.check import check_dataset, clip_problem  # noqa: E402
from diffprobe.data.dataset import DatasetError, IndexedClips  # noqa: E402
from diffprobe.data.decode import read_video, video_length  # noqa: E402
from diffprobe.data.preview import SHEET_DPI, SHEET_MAX_HEIGHT_IN, SHEET_MAX_WIDTH_IN, spread_over_labels  # noqa: E402
from diffprobe.data.registry import open_dataset, opened_datasets  # noqa: E402
from diffprobe.data.splits import resolve_roles  # noqa: E402
from diffprobe.utils.cliopts import overrides_option, report_skipped  # noqa: E402
from diffprobe.utils.media import av_error_text  # noqa: E402

ERRNO = re.compile(r"Errno|1094995529")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real footage: an mp4 of 20 frames, one of 12, one of 5, and a damaged copy of the first (cut in half: its
    index, at the end of an mp4, is gone)."""
    root = tmp_path_factory.mktemp("sources")
    out = {f"f{n}": write_video(root / f"f{n}.mp4", real_frames("bikes.mp4", count=n)) for n in (20, 12, 5)}
    out["damaged"] = truncate(Path(shutil.copy(out["f20"], root / "damaged.mp4")), keep=0.5)
    return out


def folder(root: Path, files: dict[str, Path | None]) -> Path:
    """A ``videos:`` folder: name -> a source to copy, or ``None`` for a zero-byte file."""
    root.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        if src is None:
            (root / name).write_bytes(b"")
        else:
            shutil.copy(src, root / name)
    return root


def info(spec: str, *extra: str):
    return CliRunner().invoke(main, ["data", "info", spec, "--quiet", *extra])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert not ERRNO.search(result.output), result.output
    return lines[0]


# ---- data info checks before compute is spent ----------------------------------------------------------------------


def test_data_info_refuses_a_zero_byte_mp4(sources, tmp_path) -> None:
    root = folder(tmp_path / "v", {"a.mp4": sources["f20"], "b.mp4": None, "c.mp4": sources["f20"]})
    line = one_error_line(info(f"videos:{root}@size=32"))  # b.mp4 is neither the first nor the last clip
    assert line == f"Error: {root / 'b.mp4'}: empty file (0 bytes)"


def test_data_info_reads_clips_too_short_for_the_sampler(sources, tmp_path) -> None:
    root = folder(tmp_path / "v", {"a.mp4": sources["f12"], "b.mp4": sources["f12"]})
    line = one_error_line(info(f"videos:{root}@size=32"))  # the default frames=16
    assert line == f"Error: {root / 'a.mp4'}: only 12 frame(s), needs 16 for frames=16 at stride=1"
    line = one_error_line(info(f"videos:{root}@size=32,frames=8,stride=2"))
    assert line == f"Error: {root / 'a.mp4'}: only 12 frame(s), needs 15 for frames=8 at stride=2"
    ok = info(f"videos:{root}@size=32,frames=6,stride=2")
    assert ok.exit_code == 0, ok.output
    assert "all: 2 clips, 2 read and checked" in ok.output and "no problem" in ok.output


def test_on_bad_skip_gives_the_count_and_every_reason(sources, tmp_path) -> None:
    root = folder(tmp_path / "v", {"a.mp4": sources["f20"], "b.mp4": None, "c.mp4": sources["damaged"],
                                   "d.mp4": sources["f5"], "e.mp4": sources["f20"]})
    result = info(f"videos:{root}@size=32,frames=5,stride=2,on_bad=skip")
    assert result.exit_code == 0, result.output
    assert not ERRNO.search(result.output), result.output
    assert "all: 2 clips, 2 read and checked; 3 skipped: " in result.output
    for reason in (f"{root / 'b.mp4'}: empty file (0 bytes)",
                   f"{root / 'c.mp4'}: not a readable video: invalid data (empty or damaged file)",
                   f"{root / 'd.mp4'}: only 5 frame(s), needs 9 for frames=5 at stride=2"):
        assert reason in result.output
    nothing = folder(tmp_path / "w", {"b.mp4": None, "d.mp4": sources["f5"]})
    result = info(f"videos:{nothing}@size=32,frames=5,stride=2,on_bad=skip")
    assert "all: 0 clips, 0 read and checked; 2 skipped: " in result.output
    assert one_error_line(result) == (f"Error: videos:{nothing}@size=32,frames=5,stride=2,on_bad=skip: no clip left in "
                                      f"any split (2 skipped, listed above)")


def test_full_reads_every_clip(sources, tmp_path) -> None:
    root = folder(tmp_path / "v", {"a.mp4": sources["f20"], "b.mp4": sources["damaged"], "c.mp4": sources["f20"]})
    first_last = info(f"videos:{root}@size=32")
    assert first_last.exit_code == 0, first_last.output
    assert "the first and the last clip of each split" in first_last.output
    assert one_error_line(info(f"videos:{root}@size=32", "--full")) == (
        f"Error: {root / 'b.mp4'}: not a readable video: invalid data (empty or damaged file)")
    check = check_dataset(open_dataset(f"videos:{root}@size=32,on_bad=skip"), full=True, progress=False)
    assert [(s.split, s.clips, s.checked, len(s.skipped)) for s in check.splits] == [("all", 2, 2, 1)]


#: kind -> (fixture writer, spec options): every reader's fixture in its real on-disk format
READERS = {
    "kinetics": (fixtures_video.write_kinetics_fixture, "frames=4,stride=2,size=32"),
    "ssv2": (fixtures_video.write_ssv2_fixture, "frames=4,stride=2,size=32"),
    "imagefolder": (fixtures_video.write_imagefolder_fixture, "size=32"),
    "images": (fixtures_video.write_image_folder_fixture, "size=32"),
    "videos": (fixtures_video.write_video_folder_fixture, "frames=4,size=32"),
    "tapvid": (fixtures_tracking.write_tapvid_davis_fixture, "frames=8,size=32"),
    "davis": (fixtures_tracking.write_davis_fixture, "frames=4,size=32"),
    "scannet": (fixtures_geometry.write_scannet_fixture, "frames=4,stride=2,size=32"),
    "re10k": (fixtures_geometry.write_re10k_fixture, "frames=4,stride=2,size=32"),
}


@pytest.mark.parametrize("kind", sorted(READERS))
def test_every_reader_passes_the_full_check(kind, tmp_path) -> None:
    write, options = READERS[kind]
    check = check_dataset(open_dataset(f"{kind}:{write(tmp_path / kind)}@{options}"), full=True, progress=False)
    assert check.clips > 0 and all(s.checked == s.clips and not s.skipped for s in check.splits)


def test_a_clip_that_breaks_the_contract_is_a_problem_and_skipped() -> None:
    from test_datasets import Toy

    ds = Toy(("all",), n=3)
    good = {"video": np.zeros((1, 4, 4, 3), np.uint8), "label": 1}
    assert clip_problem(ds, good) is None
    assert clip_problem(ds, {**good, "video": np.zeros((2, 4, 4, 3), np.uint8)}) == (
        "2 frame(s) of 4x4 px, the dataset's clips are 1 of 4x4")
    assert clip_problem(ds, {**good, "label": 3}) == "label 3 is outside the label space of 3 classes"
    assert clip_problem(ds, {"video": good["video"]}) == "clip lacks the field(s) ['label'] the dataset declares"
    tracked = {"video": np.zeros((1, 4, 4, 3), np.uint8), "tracks": np.full((1, 1, 2), 9.0, np.float32),
               "visible": np.ones((1, 1), bool)}
    ds.fields = frozenset({"video", "tracks", "visible"})
    assert "visible track points outside the 4x4 frame" in clip_problem(ds, tracked)
    assert clip_problem(ds, {**tracked, "visible": np.zeros((1, 1), bool)}) is None  # out of frame, not visible

    class Bent(type(ds)):
        def split(self, name: str) -> IndexedClips:
            return IndexedClips("bent", "all", [0, 1, 2], lambda i: {**good, "label": i * 2},
                                describe=lambda i: f"c{i}")

    bent = Bent(("all",), n=3)
    with pytest.raises(DatasetError, match=r"^c2: label 4 is outside the label space of 3 classes$"):
        check_dataset(bent)  # the last clip
    bent.on_bad = "skip"
    assert len(bent.clips("all")) == 2
    assert bent.skipped == {"all": [{"index": 2, "source": "c2", "error": "c2: label 4 is outside the label space "
                                                                         "of 3 classes"}]}


# ---- TAP-Vid points in pixels ---------------------------------------------------------------------------------------


def test_tapvid_points_in_pixels_are_refused(tmp_path) -> None:
    path = write_tapvid_davis_fixture(tmp_path, frames=12, height=40, width=64)
    data = pickle.loads(path.read_bytes())
    data["bear"]["points"] = data["bear"]["points"] * np.array([64, 40], np.float32)  # pixels, not [0, 1]
    path.write_bytes(pickle.dumps(data))
    spec = f"tapvid:{path}@frames=8,size=32"
    visible = data["bear"]["points"][~data["bear"]["occluded"]]
    biggest = f"{visible.max():.1f}"
    with pytest.raises(DatasetError) as e:
        open_dataset(spec)
    assert str(e.value) == (f"{path}: video 'bear': points look like pixels: max {biggest}, expected [0, 1] (x, y "
                            f"normalised by the frame's width and height)")
    assert one_error_line(info(spec)) == f"Error: {e.value}"
    skip = open_dataset(spec + ",on_bad=skip")
    assert len(skip.clips("all")) == 1 and skip.skipped["all"][0]["error"] == str(e.value)
    data["bear"]["points"] = data["bear"]["points"] / np.array([64, 40], np.float32) + np.array([0.0, 0.3])
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DatasetError, match=r"video 'bear': points lie outside the frame: max 1\.\d+, expected"):
        open_dataset(spec)


# ---- skips: reported, recorded, merged ------------------------------------------------------------------------------


def test_every_skip_path_records_its_reason(sources, tmp_path) -> None:
    root = folder(tmp_path / "v", {"a.mp4": sources["f20"], "b.mp4": None, "c.mp4": sources["damaged"],
                                   "d.mp4": sources["f5"]})
    for windows in ("first", "all"):  # index-time (0 bytes; lengths under windows=all) and read-time skips
        ds = open_dataset(f"videos:{root}@size=32,frames=5,stride=2,windows={windows},on_bad=skip")
        assert len(ds.clips("all")) == (1 if windows == "first" else 2)
        reasons = {Path(r["source"]).name: r["error"] for r in ds.skipped["all"]}
        assert sorted(reasons) == ["b.mp4", "c.mp4", "d.mp4"], reasons
        assert all(r.startswith(str(root)) and not ERRNO.search(r) for r in reasons.values())
    classes = tmp_path / "classes"
    for name in ("cat", "cup"):
        (classes / name).mkdir(parents=True)
        Image.fromarray(real_image("coffee", (20, 20))).save(classes / name / "a.png")
    (classes / "cup" / "b.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=f"^{classes / 'cup' / 'b.png'}: empty file \\(0 bytes\\)$"):
        open_dataset(f"imagefolder:{classes}")
    ds = open_dataset(f"imagefolder:{classes}@on_bad=skip")
    assert len(ds.clips("all")) == 2 and [r["source"] for r in ds.skipped["all"]] == [str(classes / "cup" / "b.png")]


def test_skipped_json_is_merged_by_spec_in_the_named_folder(sources, tmp_path, monkeypatch, capsys) -> None:
    one = folder(tmp_path / "one", {"a.mp4": sources["f20"], "b.mp4": None})
    two = folder(tmp_path / "two", {"a.mp4": sources["f20"], "c.mp4": sources["damaged"]})
    specs = [f"videos:{one}@size=32,on_bad=skip", f"videos:{two}@size=32,on_bad=skip"]
    datasets = [open_dataset(s) for s in specs]
    for ds in datasets:
        ds.clips("all")
    cwd, run = tmp_path / "elsewhere", tmp_path / "run"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert report_skipped([datasets[0]], run) == 1
    assert report_skipped([datasets[1]], run) == 1  # a second command into the same folder
    assert report_skipped([datasets[0]], run) == 1  # the first again: replaced, not doubled
    stored = json.loads((run / "skipped.json").read_text())
    assert sorted(stored) == sorted(specs)
    assert [r["source"] for r in stored[specs[0]]["all"]] == [str(one / "b.mp4")]
    assert stored[specs[1]]["all"][0]["error"] == f"{two / 'c.mp4'}: not a readable video: invalid data (empty or " \
                                                  f"damaged file)"
    assert list(cwd.iterdir()) == []
    err = capsys.readouterr().err
    assert err.count(f"skipped 1 unreadable clip(s) of {specs[0]} (on_bad=skip: 1 of all; all listed in "
                     f"{run / 'skipped.json'}): {one / 'b.mp4'}: empty file (0 bytes)") == 2
    assert not ERRNO.search(err)
    clean = open_dataset(f"videos:{folder(tmp_path / 'clean', {'a.mp4': sources['f20']})}@size=32,on_bad=skip")
    clean.clips("all")
    capsys.readouterr()
    assert report_skipped([clean], run) == 0 and capsys.readouterr().err == ""  # nothing skipped: nothing said
    (run / "skipped.json").write_text("{torn")
    report_skipped([datasets[1]], run)
    assert list(json.loads((run / "skipped.json").read_text())) == [specs[1]]
    assert (run / "skipped.json.unreadable").read_text() == "{torn"


def test_a_command_can_collect_the_datasets_a_function_opens(sources, tmp_path, capsys) -> None:
    root = folder(tmp_path / "v", {"a.mp4": sources["f20"], "b.mp4": sources["damaged"], "c.mp4": sources["f20"]})
    spec = f"videos:{root}@size=32,frames=9,on_bad=skip"
    with opened_datasets() as outer:
        with opened_datasets() as inner:
            clips = resolve_roles({"train": spec})["train"].clips  # as train_tokenizer reads its data
        open_dataset(f"videos:{root}@size=32,frames=9,on_bad=skip,stride=2")
    open_dataset(spec)  # outside both blocks: not collected
    assert [ds.spec for ds in inner] == [spec] and len(outer) == 2 and len(clips) == 2
    capsys.readouterr()
    assert report_skipped(outer, tmp_path / "run") == 1
    assert f"{root / 'b.mp4'}: not a readable video" in capsys.readouterr().err
    assert list(json.loads((tmp_path / "run" / "skipped.json").read_text())) == [spec]


# ---- PyAV errors in words -------------------------------------------------------------------------------------------


def test_pyav_errors_are_said_in_words(sources, tmp_path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in (empty, sources["damaged"]):
        for read in (video_length, lambda p: read_video(p, [0, 1])):
            with pytest.raises(DatasetError) as e:
                read(path)
            assert str(e.value) == f"{path}: not a readable video: invalid data (empty or damaged file)"
    import av

    with pytest.raises(av.error.FFmpegError) as e:
        av.open(str(tmp_path / "missing.mp4"))
    assert av_error_text(e.value) == "no such file"
    assert av_error_text(OSError(5, "Input/output error")) == "input/output error"


# ---- data preview: a bounded grid over the classes -------------------------------------------------------------------


def test_preview_of_class_folders_is_a_bounded_grid_over_every_class(tmp_path, monkeypatch) -> None:
    root = tmp_path / "classes"
    photos = ("astronaut", "coffee", "chelsea", "rocket", "camera")
    for photo in photos:
        big = real_image(photo, (64, 64))
        for k in range(6):
            (root / photo).mkdir(parents=True, exist_ok=True)
            Image.fromarray(big[k * 4:k * 4 + 40, k * 3:k * 3 + 40]).save(root / photo / f"{k}.png")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # run from another folder, as a user would
    sizes = {}
    for num in (5, 30):
        result = CliRunner().invoke(main, ["data", "preview", f"imagefolder:{root}@size=32", "--out", f"p{num}",
                                           "--num", str(num)])
        assert result.exit_code == 0, result.output
        shown = json.loads((work / f"p{num}" / "dataset.json").read_text())["shown"]
        labels = [i // 6 for i in shown]  # 6 images a class, classes in sorted order
        assert len(shown) == num and sorted(set(labels[:5])) == [0, 1, 2, 3, 4]  # every class in the first five
        sizes[num] = Image.open(work / f"p{num}" / "contact_sheet.png").size
    w, h = sizes[30]
    assert w <= SHEET_MAX_WIDTH_IN * SHEET_DPI and h <= SHEET_MAX_HEIGHT_IN * SHEET_DPI
    assert w > 3 * 200 and h < 2 * w  # several images a row (old: one 1100-px row per image, 1100 x 33840)
    assert sizes[5][0] < w and sizes[5][1] < h


def test_spread_over_labels_takes_each_class_in_turn() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2, 0])
    assert spread_over_labels(labels, 4) == [0, 3, 4, 1]
    assert spread_over_labels(labels, 10) == [0, 3, 4, 1, 5, 2, 6]
    assert spread_over_labels(np.array([], np.int64), 3) == []


def test_set_help_is_generic() -> None:
    text = next(p for p in overrides_option(lambda: None).__click_params__).help
    assert "train.steps" not in text and "diffprobe config show KIND" in text
