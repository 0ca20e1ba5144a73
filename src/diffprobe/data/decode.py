"""Decoding real files: videos with PyAV, images and PNG maps with Pillow; every failure names the file.

Videos are decoded frame by frame and only up to the last frame asked for, so a long video never sits in memory.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffprobe.data.dataset import DatasetError
from diffprobe.utils.media import av_error_text

#: the start of the message for a file that does not open as a video
NOT_A_VIDEO = "not a readable video"


def video_length(path: str | Path) -> int:
    """Number of frames of a video (from the container's stream header, else by demuxing)."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for packet in container.demux(stream) if packet.size)
    except (av.FFmpegError, OSError) as e:
        raise DatasetError(f"{path}: {NOT_A_VIDEO}: {av_error_text(e)}") from e


def read_video(path: str | Path, indices: Sequence[int] | None = None) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` RGB frames ``indices`` of a video (all frames when ``None``).

    A file that does not open or decode, or that has fewer frames than asked for, is a :class:`DatasetError` naming
    the file."""
    import av

    path = Path(path)
    wanted = None if indices is None else [int(i) for i in indices]
    last = None if wanted is None else max(wanted)
    frames: dict[int, np.ndarray] = {}
    count = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                count = i + 1
                if wanted is None or i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")  # (H, W, 3)
                if last is not None and i >= last:
                    break
    except (av.FFmpegError, OSError) as e:
        if not count:
            raise DatasetError(f"{path}: {NOT_A_VIDEO}: {av_error_text(e)}") from e
        raise DatasetError(f"{path}: video breaks off after {count} decodable frame(s): {av_error_text(e)}") from e
    if wanted is None:
        wanted = list(range(count))
    missing = [i for i in wanted if i not in frames]
    if not count:
        raise DatasetError(f"{path}: {NOT_A_VIDEO}: no decodable frame (empty or damaged file)")
    if missing or not wanted:
        raise DatasetError(f"{path}: only {count} decodable frame(s), frame {missing[0] if missing else 0} asked "
                           f"for (truncated or too short)")
    return np.stack([frames[i] for i in wanted])


def _open_image(source: str | Path | bytes, where: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        img.load()
        return img
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{where}: cannot decode image: {e}") from e


def read_image(source: str | Path | bytes, where: str | None = None) -> np.ndarray:
    """uint8 ``(H, W, 3)`` RGB image from a file or encoded bytes (JPEG, PNG, ...)."""
    where = where or str(source)
    return np.asarray(_open_image(source, where).convert("RGB"))


def read_png_map(path: str | Path) -> np.ndarray:
    """A single-channel PNG as stored (``(H, W)``: uint16 depth maps stay uint16, palette PNGs give their indices)."""
    img = _open_image(path, str(path))
    if img.mode == "P" or img.mode == "L":
        return np.asarray(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(img).astype(np.uint16 if img.mode.startswith("I;16") else np.int32)
    raise DatasetError(f"{path}: expected a single-channel PNG (palette, 8- or 16-bit), got mode {img.mode!r}")
