"""Writing videos and frame grids: GIF (Pillow), MP4 (PyAV, H.264) and PNG grids, all written atomically."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from diffprobe.errors import FileProblem
from diffprobe.utils.io import atomic_path

#: PyAV's (FFmpeg's) error classes by name -> what they mean, in words (looked up along the error's class hierarchy)
AV_ERRORS: dict[str, str] = {
    "InvalidDataError": "invalid data (empty or damaged file)",
    "EOFError": "ends early (truncated file)",
    "FileNotFoundError": "no such file",
    "IsADirectoryError": "a folder, not a file",
    "PermissionError": "permission denied",
    "DemuxerNotFoundError": "unknown container format",
    "DecoderNotFoundError": "its codec has no decoder in this PyAV build",
    "EncoderNotFoundError": "this PyAV build has no encoder for the codec",
    "MuxerNotFoundError": "unknown container format",
    "PatchWelcomeError": "uses a feature FFmpeg does not support",
    "MemoryError": "out of memory",
}


def av_error_text(error: BaseException) -> str:
    """What a PyAV (or OS) error means, in words and without its errno number: ``InvalidDataError`` -> "invalid
    data (empty or damaged file)"; an error of another kind -> its message with any ``[Errno N]`` prefix removed."""
    for cls in type(error).__mro__:
        if cls.__name__ in AV_ERRORS:
            return AV_ERRORS[cls.__name__]
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    text = re.sub(r"\[Errno -?\d+\]\s*", "", str(text)).strip()
    return text[:1].lower() + text[1:]


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ``(..., H, W, 3)`` frames by an integer factor."""
    return frames.repeat(scale, axis=-3).repeat(scale, axis=-2)


def write_video(frames: np.ndarray, path: str | Path, fps: int = 6, scale: int = 4) -> None:
    """Write uint8 frames ``(T, H, W, 3)`` as ``.gif`` or ``.mp4`` (chosen by the suffix); an encoder failure is a
    :class:`~diffprobe.errors.FileProblem` naming the file."""
    path = Path(path)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    big = upscale(frames, scale)
    with atomic_path(path) as tmp:
        if path.suffix == ".gif":
            images = [Image.fromarray(f) for f in big]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
        elif path.suffix == ".mp4":
            import av

            h, w = big.shape[1:3]
            try:
                with av.open(str(tmp), mode="w", format="mp4") as container:
                    stream = container.add_stream("libx264", rate=fps)
                    stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
                    for f in big:
                        f = np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)))
                        container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
                    container.mux(stream.encode())
            except (av.FFmpegError, OSError) as e:
                raise FileProblem(f"{path}: cannot write the MP4 video: {av_error_text(e)}") from e
        else:
            raise ValueError(f"{path}: unknown video format {path.suffix!r}; use .gif or .mp4")


def frame_grid(videos: np.ndarray, pad: int = 1) -> np.ndarray:
    """uint8 ``(N, T, H, W, 3)`` -> one image ``(N*(H+pad)+pad, T*(W+pad)+pad, 3)``: a row per video, a column per
    frame, on a white background."""
    n, t, h, w, _ = videos.shape
    grid = np.full((n * (h + pad) + pad, t * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        for j in range(t):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = videos[i, j]
    return grid


def write_png(image: np.ndarray, path: str | Path, scale: int = 1) -> None:
    """Write a uint8 ``(H, W, 3)`` image as PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(upscale(image, scale)).save(tmp, format="PNG")
