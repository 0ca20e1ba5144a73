"""How the video kinds (``cogvideox``, ``wan``, ``latte``) cut a clip into windows and encode them.

- :class:`VideoOptions`: the ``frames`` / ``window`` / ``overlap`` options (a clip cut to its first window, or tiled
  into windows, overlapping by ``overlap`` frames, that are each encoded and denoised as their own sample);
  :class:`TiledVideoOptions`: with ``vae_tiling`` / ``vae_tile``, the video VAEs' tiling (``cogvideox``, ``wan``).
- :class:`Windows` splits a clip; :func:`causal_windows` plans the windows of a causal video VAE (:class:`WindowPlan`);
  :func:`stitch_index` puts overlapping windows' features back together per frame (docs/features.md, "Long videos").
- :func:`video_vae_encoder`: the windows through the folder's video VAE (tiled by :func:`vae_tiling`), windows a call
  halved on out-of-memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from einops import rearrange

from diffprobe.backbones.external import ExternalOptions, VAETiling, require_at_least
from diffprobe.config import ConfigError
from diffprobe.errors import InputError
from diffprobe.utils.chunks import HalvingChunks

if TYPE_CHECKING:
    from diffprobe.backbones.loading import TransformerFolder


def check_size(height: int, width: int, multiple: int, kind: str) -> None:
    """Frames must tile into whole patches of the latent grid: H and W multiples of (VAE factor x patch)."""
    if height % multiple or width % multiple:
        raise InputError(f"{kind}: frames of {height}x{width} pixels do not tile into the model's patches (height and "
                         f"width must be multiples of {multiple}: the VAE's spatial factor x the patch size)")


@dataclasses.dataclass(frozen=True)
class VideoOptions(ExternalOptions):
    """Options of the video kinds (``cogvideox``, ``wan``, ``latte``)."""

    IDENTITY_DEFAULTS: ClassVar[dict[str, Any]] = {"overlap": 0}

    frames: int = 0  #: frames per window the model sees (0: the whole clip; latte: its video_length)
    window: Literal["tile", "cut"] = "tile"  #: tile: the clip in consecutive windows; cut: its first window only
    overlap: int = 0  #: frames consecutive tiled windows share (0: end to end); their features are stitched per frame

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 0, "frames", "overlap")
        name = type(self).__name__
        if self.overlap and self.window != "tile":
            raise ConfigError(f"{name}.overlap: windows overlap only with window=tile, got window={self.window}")
        if self.overlap and self.frames and self.overlap >= self.frames:
            raise ConfigError(f"{name}.overlap: must be below frames={self.frames}, got {self.overlap}")


@dataclasses.dataclass(frozen=True)
class TiledVideoOptions(VideoOptions):
    """Options of the kinds whose video VAE tiles (``cogvideox``, ``wan``): ``vae_tiling`` (auto: frames taller or
    wider than one tile are encoded in tiles; off: never) and ``vae_tile`` (tile size in pixels; 0: the VAE's own)."""

    vae_tiling: Literal["auto", "off"] = "auto"
    vae_tile: int = 0

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 0, "vae_tile")
        if self.vae_tile % 32:
            raise ConfigError(f"{type(self).__name__}.vae_tile: must be a multiple of 32 pixels (0: the VAE's own "
                              f"tile), got {self.vae_tile}")


@dataclasses.dataclass(frozen=True)
class Windows:
    """A clip of T frames -> K windows of ``frames`` frames, each its own sample (``frames`` 0: the whole clip),
    starting every ``frames - overlap`` frames (``overlap`` 0: end to end).

    ``rule(n)`` is the model's check of a window length (an error message, or None when it works)."""

    frames: int
    window: str
    rule: Callable[[int], str | None]
    kind: str
    overlap: int = 0

    def starts(self, total: int) -> list[int]:
        """The first frame of each window of a clip of ``total`` frames."""
        n = self.frames or total
        if total < n:
            raise InputError(f"{self.kind}: the clip has {total} frames, fewer than frames={n}")
        if self.window == "cut":
            return [0]
        stride = n - self.overlap
        k, rest = divmod(total - n, stride)
        if rest:
            if not self.overlap:
                raise InputError(f"{self.kind}: a clip of {total} frames does not tile into windows of frames={n} "
                                 f"(use frames= a divisor of {total}, or window=cut)")
            raise InputError(f"{self.kind}: a clip of {total} frames does not tile into windows of frames={n} "
                             f"overlapping by overlap={self.overlap} (frames + m * (frames - overlap) do: "
                             f"{n + k * stride} or {n + (k + 1) * stride}; set the dataset's frames, or window=cut)")
        return [i * stride for i in range(k + 1)]

    def split(self, video: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(B, T, ...) -> ((B * K, N, ...), K)``."""
        starts = self.starts(video.shape[1])
        n = self.frames or video.shape[1]
        problem = self.rule(n)
        if problem:
            raise InputError(f"{self.kind}: {problem} (got {n}; set the frames= option)")
        clips = torch.stack([video[:, s:s + n] for s in starts], dim=1)  # (B, K, N, ...)
        return rearrange(clips, "b k n ... -> (b k) n ..."), len(starts)


def stitch_index(windows: int, per: int, stride: int, causal: bool) -> torch.Tensor:
    """Where each frame of the stitched clip comes from: an index into the ``windows * per`` frames of ``windows``
    windows of ``per`` (latent / feature) frames end to end, window i's frame j being the clip's frame
    ``i * stride + j``. A frame covered by several windows is taken from the one where it is furthest from the
    window's edges (``min(j, per - 1 - j)``), the earlier window on a tie; so an overlap is cut in its middle.
    ``causal``: a causal video VAE's window (after the first) starts with a latent frame of its first pixel frame
    alone, which is no frame of the clip's own latent grid: it is never taken. Returns ``(windows - 1) * stride +
    per`` indices."""
    best: dict[int, tuple[int, int]] = {}  # clip frame -> (margin, index)
    for i in range(windows):
        for j in range(1 if causal and i else 0, per):
            margin, g = min(j, per - 1 - j), i * stride + j
            if g not in best or margin > best[g][0]:
                best[g] = (margin, i * per + j)
    return torch.tensor([best[g][1] for g in range(len(best))])


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """How a video kind's clip is cut: ``windows`` (pixels), the latent frames of one window (``latents``; None: the
    whole clip is one) and, for overlapping windows, the latent frames between window starts (``stride``; None: no
    stitching, windows end to end)."""

    windows: Windows
    latents: int | None
    stride: int | None


def causal_windows(folder: TransformerFolder[VideoOptions], ratio: int) -> WindowPlan:
    """The windows of a kind whose causal video VAE compresses time ``ratio`` times: a window must have
    ``1 + ratio * k`` frames (``1 + k`` latent frames), and overlapping windows must start ``ratio * m`` frames apart
    (``overlap`` = 1 + ratio * j frames), so that every window's latent frames after its first fall on the clip's own
    latent grid (latent frame g >= 1 of the clip: pixel frames ``ratio * (g - 1) + 1 .. ratio * g``)."""
    opts = folder.opts
    windows = Windows(opts.frames, opts.window,
                      lambda n: None if (n - 1) % ratio == 0 else f"windows must have 1 + {ratio}k frames", folder.kind,
                      opts.overlap)
    if not opts.overlap:
        return WindowPlan(windows, (opts.frames - 1) // ratio + 1 if opts.frames else None, None)
    if not opts.frames or (opts.frames - opts.overlap) % ratio:
        raise ConfigError(f"{type(opts).__name__}.overlap: {folder.kind} windows (frames=1+{ratio}k) overlapping by "
                          f"overlap frames must start a multiple of {ratio} frames apart (its VAE's time factor): "
                          f"overlap must be 1 + {ratio}j with frames > 0, got frames={opts.frames}, "
                          f"overlap={opts.overlap}")
    return WindowPlan(windows, (opts.frames - 1) // ratio + 1, (opts.frames - opts.overlap) // ratio)


def vae_tiling(folder: TransformerFolder[TiledVideoOptions]) -> VAETiling | None:
    """The folder's video VAE tiled as its options say (``vae_tiling=auto``: on, applied to frames larger than one
    tile; ``off``: None)."""
    if folder.opts.vae_tiling == "off":
        return None
    return VAETiling.enable(folder.vae, folder.opts.vae_tile)


def video_vae_encoder(folder: TransformerFolder[VideoOptions], windows: Windows,
                      normalise: Callable[[torch.Tensor], torch.Tensor], multiple: int
                      ) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 clips (B, T, H, W, 3) -> the windows' normalised latents end to end (B, K * T'w, h, w, C): each window
    encoded by the folder's video VAE as its own sample ([-1, 1] pixels, (N, 3, T, H, W)), at its latent mean,
    ``batch_size`` windows a call (halved on out-of-memory: :class:`HalvingChunks`); ``multiple``: what H and W must
    divide by."""
    vae, device, dtype = folder.vae, folder.device, folder.dtype
    fit = HalvingChunks(folder.opts.batch_size, "windows", f"{folder.kind} VAE")

    def encode(video: torch.Tensor) -> torch.Tensor:
        check_size(video.shape[2], video.shape[3], multiple, folder.kind)
        clips, _ = windows.split(video.to(device))  # (B*K, N, H, W, 3)
        x = (rearrange(clips, "b t h w c -> b c t h w").float() / 127.5 - 1).to(dtype)  # [-1, 1]
        z = fit(lambda part: vae.encode(part).latent_dist.mean, x, dim=0)  # (B*K, C, T'w, h, w)
        z = rearrange(normalise(z), "(b k) c t h w -> b (k t) h w c", b=len(video))
        return z  # (B, K*T'w, h, w, C)

    return encode
