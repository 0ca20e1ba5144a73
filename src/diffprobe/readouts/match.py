"""Training-free point tracking by feature matching (the DIFT / DiffTrack protocol): no readout is trained.

A query point's feature is sampled bilinearly at its ``(t, y, x)`` on the feature grid; every frame's feature map is
upsampled (bilinear) to the clip's pixel grid (or ``upsample`` times finer on each side); the cosine similarity of
the query's feature against each upsampled frame gives a map whose peak, refined by a soft-argmax (softmax at
``temperature``) over the grid cells within ``window`` tokens of the peak, is the track; a frame whose peak
similarity is below ``threshold`` is predicted occluded.

Coordinates follow TAP-Vid (DESIGN.md): queries ``(t, y, x)``, tracks ``(x, y)`` in pixels, pixel centres at +0.5.
Token ``j`` of a ``W_f``-token row covers pixels ``[j W / W_f, (j + 1) W / W_f)`` and its centre is at
``(j + 0.5) W / W_f``, so pixel ``x`` is feature coordinate ``x W_f / W - 0.5`` (the half-cell offset); both the
sampling (``grid_sample``) and the upsampling (``interpolate``) use ``align_corners=False``, which is that convention.
A pixel frame ``t`` reads the feature frame :func:`feature_frames` maps it to (the identity without temporal
compression).

Options as inputs: :func:`hyperfeatures` averages a block's features over noise seeds (DIFT's ensemble) and
concatenates several blocks on channels, each L2-normalised first. :func:`choose` picks temperature, window and
threshold on the validation split by a score the caller gives (the task's primary metric, AJ); never on test.
:func:`match_chunks` tracks a clip longer than a backbone's native frame count from its chunks' features, each chunk
its own forward (:mod:`diffprobe.data.chunks`), chaining the tracks across them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffprobe.config import Config, ConfigError
from diffprobe.data.chunks import chunk_starts
from diffprobe.errors import InputError

ArrayLike = Tensor | np.ndarray
SIM_ELEMENTS = 1 << 24  #: similarities held at once (queries x feature frames x grid cells), 64 MB of float32
#: read only the box around each peak where it is smaller than the grid (False: always the whole grid, masked; the
#: same tracks, the peer of benchmarks/bench_match.py)
READ_BOX = True
BOX_FRACTION = 4  #: the box is read where its cells are under a 1/BOX_FRACTION of the grid's (gathering costs more)


@dataclasses.dataclass(frozen=True)
class MatchParams:
    """One setting of the matcher."""

    temperature: float  #: softmax temperature of the soft-argmax, in units of cosine similarity
    window: float  #: radius of the soft-argmax around the peak, in feature tokens
    threshold: float  #: occluded where the peak cosine similarity is below this


@dataclasses.dataclass(frozen=True)
class MatchGrid(Config):
    """What :func:`choose` tries on validation (a config: a study saves it). Thresholds are not absolute (cosine
    similarities of different backbones live in different ranges): each is a quantile of the validation peak
    similarities over the frames scored, plus -1 (never occluded)."""

    temperatures: tuple[float, ...] = (0.01, 0.03, 0.1)
    windows: tuple[float, ...] = (1.0, 2.0, 4.0)
    quantiles: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    upsample: int = 1  #: similarity grid cells per pixel side (not searched: finer costs upsample**2)
    #: pixel frames per chunk, each chunk its own forward and the tracks chained (:func:`match_chunks`); 0: the whole
    #: clip. Not searched: a field here so that it enters the cell's config hash
    chunk: int = 0

    def validate(self) -> None:
        if not self.temperatures or not self.windows or min(self.temperatures) <= 0 or min(self.windows) <= 0:
            raise ConfigError("MatchGrid.temperatures/windows: need at least one positive value each")
        if any(not 0 < q < 1 for q in self.quantiles) or self.upsample < 1:
            raise ConfigError("MatchGrid.quantiles: each in (0, 1); MatchGrid.upsample: at least 1")
        if self.chunk < 0:
            raise ConfigError(f"MatchGrid.chunk: 0 (the whole clip) or a frame count, got {self.chunk}")


def feature_frames(frames: int, feature_frames_: int) -> np.ndarray:
    """The feature frame each of ``frames`` pixel frames reads, ``(frames,)`` int: the identity when the counts
    agree; a causal tokenizer's ``1 + k r`` frames -> ``1 + k`` (frame 0 alone, then groups of ``r``); ``k r`` frames
    -> ``k`` (groups of ``r``); otherwise the nearest frame in time."""
    t = np.arange(frames)
    if feature_frames_ == frames:
        return t
    if feature_frames_ > 1 and (frames - 1) % (feature_frames_ - 1) == 0:
        return -(-t // ((frames - 1) // (feature_frames_ - 1)))  # ceil: 0 | 1..r | r+1..2r | ...
    if frames % feature_frames_ == 0:
        return t // (frames // feature_frames_)
    return np.minimum(np.round((t + 0.5) * feature_frames_ / frames - 0.5).astype(int), feature_frames_ - 1)


def hyperfeatures(per_block: Sequence[Sequence[ArrayLike]]) -> Tensor:
    """One feature map ``(T_f, H_f, W_f, sum C)`` from ``per_block[b][s]``, block ``b``'s features ``(T_f, H_b, W_b,
    C_b)`` at noise seed ``s``: each block averaged over its seeds, L2-normalised per token, upsampled (bilinear) to the
    largest block grid, and the blocks concatenated on channels."""
    blocks = [torch.stack([torch.as_tensor(f, dtype=torch.float32) for f in seeds]).mean(0) for seeds in per_block]
    frames = {b.shape[0] for b in blocks}
    if len(frames) > 1:
        raise InputError(f"match: the blocks' features have different frame counts {sorted(frames)}; "
                         f"concatenate blocks of one temporal grid")
    h, w = max(b.shape[1] for b in blocks), max(b.shape[2] for b in blocks)
    out = []
    for b in blocks:  # (T_f, H_b, W_b, C_b)
        b = F.normalize(b, dim=-1)
        if b.shape[1:3] != (h, w):
            b = F.interpolate(b.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False)
            b = b.permute(0, 2, 3, 1)  # (T_f, h, w, C_b)
        out.append(b)
    return torch.cat(out, dim=-1)  # (T_f, h, w, sum C_b)


def match_grid(features: ArrayLike, queries: ArrayLike, size: tuple[int, int], frames: int,
               temperatures: Sequence[float], windows: Sequence[float], upsample: int = 1) -> tuple[Tensor, Tensor]:
    """Tracks of every (temperature, window) pair and the peak similarities, from one similarity pass.

    Args:
        features: ``(T_f, H_f, W_f, C)`` one clip's features.
        queries: ``(N, 3)`` as ``(t, y, x)`` pixels of the clip.
        size: the clip's ``(H, W)``; frames: its ``T``.
        upsample: the similarity grid's cells per pixel side (1: the pixel grid; 4: quarter-pixel cells).

    Returns:
        tracks ``(len(temperatures), len(windows), N, T, 2)`` as ``(x, y)`` pixels, and peak cosine similarity
        ``(N, T)``. At its own frame a query's track is the query point and its peak 1.
    """
    feats = torch.as_tensor(features, dtype=torch.float32)
    q = torch.as_tensor(queries, dtype=torch.float32).reshape(-1, 3)  # (N, 3)
    h, w = size
    t_f, h_f, w_f, _ = feats.shape
    n = len(q)
    fmap = feats.permute(0, 3, 1, 2)  # (T_f, C, H_f, W_f)
    frame_of = torch.from_numpy(feature_frames(frames, t_f))  # (T,)
    q_frame = q[:, 0].round().long().clamp(0, frames - 1)  # (N,)
    where = torch.stack([2 * q[:, 2] / w - 1, 2 * q[:, 1] / h - 1], dim=-1)[:, None, None]  # (N, 1, 1, 2) as (x, y)
    q_feat = F.grid_sample(fmap[frame_of[q_frame]], where, mode="bilinear", padding_mode="border",
                           align_corners=False)[:, :, 0, 0]  # (N, C)
    q_feat = F.normalize(q_feat, dim=1)
    grid = _Grid(h * upsample, w * upsample, upsample, w / w_f, h / h_f)
    used, t_index = frame_of.unique(return_inverse=True)  # the feature frames read; (T,) each pixel frame's among them
    up = F.interpolate(fmap[used], size=(grid.h, grid.w), mode="bilinear", align_corners=False)  # (U, C, gh, gw)
    up = F.normalize(up, dim=1).flatten(2)  # (U, C, G) unit features of every similarity cell
    tracks = torch.zeros(len(temperatures), len(windows), n, frames, 2)
    peaks = torch.zeros(n, frames)
    step = max(1, SIM_ELEMENTS // (len(used) * grid.h * grid.w))  # queries at once: bounds memory at (U, step, G)
    for lo in range(0, n, step):
        part = slice(lo, lo + step)
        sim = torch.einsum("nc,ucg->ung", q_feat[part], up)  # (U, n_c, G) cosine similarity
        peak, arg = sim.max(dim=-1)  # (U, n_c)
        peaks[part] = peak[t_index].T
        for j, radius in enumerate(windows):
            local, cx, cy = grid.window(sim, arg, radius)  # (U, n_c, P) similarities of the window's cells, centres
            for i, temp in enumerate(temperatures):
                weight = torch.softmax(local / temp, dim=-1)  # (U, n_c, P)
                xy = torch.stack([(weight * cx).sum(-1), (weight * cy).sum(-1)], dim=-1)  # (U, n_c, 2)
                tracks[i, j, part] = xy[t_index].transpose(0, 1)  # (n_c, T, 2)
    own = torch.arange(n)
    tracks[:, :, own, q_frame] = q[:, [2, 1]]
    peaks[own, q_frame] = 1.0
    return tracks, peaks


@dataclasses.dataclass(frozen=True)
class _Grid:
    """The similarity grid of :func:`match_grid`: ``h`` x ``w`` cells, ``upsample`` per pixel side, ``token_x`` /
    ``token_y`` pixels per feature token."""

    h: int
    w: int
    upsample: int
    token_x: float
    token_y: float

    def window(self, sim: Tensor, arg: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
        """The cells within ``radius`` tokens of each peak (cell centres, in token units on each axis): their
        similarities ``(U, n_c, P)`` (``-inf`` where a cell is off the grid or outside the radius) and centres x, y in
        pixels (broadcastable to it). ``sim`` ``(U, n_c, G)``, ``arg`` ``(U, n_c)`` the peaks' cells. Only the
        window's cells around the peak are read where they are a small part of the grid (a window of a few tokens on
        a real-size grid), else the whole grid, masked."""
        up = self.upsample
        ry, rx = math.floor(radius * self.token_y * up), math.floor(radius * self.token_x * up)  # box half-sides
        dy, dx = torch.meshgrid(torch.arange(-ry, ry + 1), torch.arange(-rx, rx + 1), indexing="ij")
        near = (dx / (self.token_x * up)) ** 2 + (dy / (self.token_y * up)) ** 2 <= radius ** 2  # inside the radius
        if READ_BOX and BOX_FRACTION * near.sum() < self.h * self.w:  # read only the window's cells around each peak
            dy, dx = dy[near], dx[near]  # (P,) offsets in cells
            py, px = (arg // self.w)[..., None] + dy, (arg % self.w)[..., None] + dx  # (U, n_c, P) cells
            on = (py >= 0) & (py < self.h) & (px >= 0) & (px < self.w)
            cells = py.clamp(0, self.h - 1) * self.w + px.clamp(0, self.w - 1)
            local = sim.gather(-1, cells).masked_fill(~on, float("-inf"))
            return local, (px + 0.5) / up, (py + 0.5) / up
        ys, xs = torch.meshgrid((torch.arange(self.h) + 0.5) / up, (torch.arange(self.w) + 0.5) / up, indexing="ij")
        xs, ys = xs.reshape(-1), ys.reshape(-1)  # (G,) cell centres in pixels
        d2 = ((xs - xs[arg, None]) / self.token_x) ** 2 + ((ys - ys[arg, None]) / self.token_y) ** 2  # (U, n_c, G)
        return sim.masked_fill(d2 > radius ** 2, float("-inf")), xs, ys


def match_points(features: ArrayLike, queries: ArrayLike, size: tuple[int, int], temperature: float,
                 window: float, threshold: float, frames: int | None = None, upsample: int = 1
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Track ``queries`` ``(N, 3)`` ``(t, y, x)`` through a clip from its ``features`` ``(T_f, H_f, W_f, C)`` (see
    the module docstring); ``frames`` is the clip's frame count (default ``T_f``), ``upsample`` as in
    :func:`match_grid`.

    Returns tracks ``(N, T, 2)`` as ``(x, y)`` pixels (the layout of the task's ``tracks`` targets) and occluded
    ``(N, T)`` bool (peak similarity below ``threshold``)."""
    frames = int(torch.as_tensor(features).shape[0]) if frames is None else frames
    tracks, peaks = match_grid(features, queries, size, frames, [temperature], [window], upsample)
    return tracks[0, 0].numpy(), (peaks < threshold).numpy()


def match_chunks(chunk_features: Sequence[ArrayLike], length: int, queries: ArrayLike, size: tuple[int, int],
                 frames: int, temperatures: Sequence[float], windows: Sequence[float], upsample: int = 1
                 ) -> tuple[Tensor, Tensor]:
    """:func:`match_grid` on a clip cut into chunks (:class:`~diffprobe.data.chunks.ChunkedClips`), tracks chained.

    Args:
        chunk_features: for each chunk ``k``, its features ``(T_c, H_f, W_f, C)`` from its own forward over pixel
            frames ``[s_k, s_k + length)`` (starts from :func:`~diffprobe.data.chunks.chunk_starts`).
        length: pixel frames per chunk. The other arguments as :func:`match_grid` (``frames``: the whole clip's).

    A query at pixel frame ``t_q`` is matched in its home chunk, the first that holds ``t_q``, with its own feature
    sampled there (one :func:`match_grid` pass for every setting). Forward, chunk ``k + 1`` is matched with a new
    query: its own feature at frame ``s_{k+1}`` (a frame chunk ``k`` also holds), sampled where chunk ``k``'s track
    puts the point; backward, chunk ``k - 1`` with a query at its last frame ``s_{k-1} + length - 1`` (which chunk
    ``k`` holds), where chunk ``k``'s track puts it. A frame two chunks hold keeps the track of the chunk the chain
    reached first, the one nearer the home chunk: after the home chunk the earlier chunk's, before it the later
    chunk's. The chain depends on the setting, so each (temperature, window) pair chains its own tracks; the peaks
    (each chunk's similarity to its own, carried query feature) are those of the first pair's chain (in the home
    chunk every pair shares them). With one chunk over the whole clip this is exactly :func:`match_grid`.

    Returns:
        as :func:`match_grid`: tracks ``(len(temperatures), len(windows), N, T, 2)`` and peaks ``(N, T)``.
    """
    starts = chunk_starts(frames, length)
    if len(chunk_features) != len(starts):
        raise ValueError(f"match_chunks: {len(chunk_features)} chunks of features for {len(starts)} chunks of "
                         f"{length} frames in {frames}")
    q = torch.as_tensor(queries, dtype=torch.float32).reshape(-1, 3)  # (N, 3)
    n = len(q)
    t_q = q[:, 0].round().long().clamp(0, frames - 1)  # (N,)
    home = torch.searchsorted(torch.tensor(starts) + length, t_q, right=True)  # (N,) first chunk ending after t_q
    tracks = torch.zeros(len(temperatures), len(windows), n, frames, 2)
    peaks = torch.zeros(n, frames)
    for k, s in enumerate(starts):  # every query in its home chunk: all settings from one pass
        idx = (home == k).nonzero()[:, 0]
        if len(idx):
            local = torch.cat([(t_q[idx] - s).float()[:, None], q[idx, 1:]], dim=1)  # (n_k, 3)
            tr, pk = match_grid(chunk_features[k], local, size, length, temperatures, windows, upsample)
            tracks[:, :, idx, s:s + length], peaks[idx, s:s + length] = tr, pk

    def chain(k: int, idx: Tensor, shared: int, lo: int, hi: int) -> None:
        """Chunk ``k`` for queries ``idx`` handed on at pixel frame ``shared``, filling pixel frames ``[lo, hi)``."""
        s = starts[k]
        for (i, temp), (j, win) in itertools.product(enumerate(temperatures), enumerate(windows)):
            at = tracks[i, j, idx, shared]  # (n_k, 2) as (x, y)
            local = torch.stack([torch.full_like(at[:, 0], shared - s), at[:, 1], at[:, 0]], dim=1)  # (n_k, 3)
            tr, pk = match_grid(chunk_features[k], local, size, length, [temp], [win], upsample)
            tracks[i, j, idx, lo:hi] = tr[0, 0][:, lo - s:hi - s]
            if i == j == 0:
                peaks[idx, lo:hi] = pk[:, lo - s:hi - s]

    for k in range(1, len(starts)):  # forward, from the frame chunk k shares with chunk k - 1
        idx = (home < k).nonzero()[:, 0]
        if len(idx):
            chain(k, idx, starts[k], starts[k - 1] + length, starts[k] + length)
    for k in range(len(starts) - 2, -1, -1):  # backward, from chunk k's last frame
        idx = (home > k).nonzero()[:, 0]
        if len(idx):
            chain(k, idx, starts[k] + length - 1, starts[k], starts[k + 1])
    return tracks, peaks


def match_split(clip_features: Iterable[ArrayLike | Sequence[ArrayLike]], queries: np.ndarray, valid: np.ndarray,
                size: tuple[int, int], frames: int, temperatures: Sequence[float], windows: Sequence[float],
                upsample: int = 1, chunk: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`match_grid` on every clip of a split (task targets layout: ``queries`` ``(B, Q, 3)``, ``valid``
    ``(B, Q)``; ``clip_features`` yields each clip's ``(T_f, H_f, W_f, C)`` in order), or with ``chunk`` (pixel
    frames per chunk) :func:`match_chunks` (``clip_features`` then yields each clip's list of chunk features).
    Returns tracks ``(G_t, G_w, B, Q, T, 2)`` and peaks ``(B, Q, T)``; slots that are not valid are left at 0 (they
    are never scored)."""
    b, slots = valid.shape
    tracks = np.zeros((len(temperatures), len(windows), b, slots, frames, 2), np.float32)
    peaks = np.zeros((b, slots, frames), np.float32)
    count = 0
    for i, feats in enumerate(clip_features):
        count += 1
        keep = np.flatnonzero(valid[i])
        if len(keep):
            if chunk:
                tr, pk = match_chunks(feats, chunk, queries[i][keep], size, frames, temperatures, windows, upsample)
            else:
                tr, pk = match_grid(feats, queries[i][keep], size, frames, temperatures, windows, upsample)
            tracks[:, :, i, keep], peaks[i, keep] = tr.numpy(), pk.numpy()
    if count != b:
        raise ValueError(f"match_split: {count} clips of features for {b} clips of targets")
    return tracks, peaks


def predictions(tracks: np.ndarray, peaks: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The task's prediction dict from one setting's tracks ``(B, Q, T, 2)`` and the peaks ``(B, Q, T)``."""
    return {"tracks": tracks, "visible": peaks >= threshold}


def thresholds(peaks: np.ndarray, valid: np.ndarray, queries: np.ndarray, grid: MatchGrid) -> list[float]:
    """The threshold candidates of ``grid`` on a split: -1, and the quantiles of the peaks of its valid queries
    in every frame but the query's own."""
    frames = np.arange(peaks.shape[-1])
    other = valid[..., None] & (frames != np.round(queries[..., :1]))  # (B, Q, T)
    scored = peaks[other]
    qs = np.quantile(scored, grid.quantiles).tolist() if scored.size else []
    return [-1.0] + [float(v) for v in qs]


def choose(grid: MatchGrid, val_features: Iterable[ArrayLike | Sequence[ArrayLike]], val_queries: np.ndarray,
           val_valid: np.ndarray, size: tuple[int, int], frames: int, score: Callable[[dict[str, np.ndarray]], float]
           ) -> tuple[MatchParams, float]:
    """The setting of ``grid`` whose validation predictions score highest by ``score`` (the task's primary metric
    on the validation targets, higher is better; ties go to the earlier setting), and that score. With
    ``grid.chunk``, ``val_features`` yields each clip's chunk features (:func:`match_split`)."""
    tracks, peaks = match_split(val_features, val_queries, val_valid, size, frames, grid.temperatures, grid.windows,
                                grid.upsample, grid.chunk)
    best: tuple[MatchParams, float] | None = None
    ths = thresholds(peaks, val_valid, val_queries, grid)
    for (i, temp), (j, win), th in itertools.product(enumerate(grid.temperatures), enumerate(grid.windows), ths):
        value = score(predictions(tracks[i, j], peaks, th))
        value = value if np.isfinite(value) else float("-inf")  # a split with nothing to score ranks last
        if best is None or value > best[1]:
            best = (MatchParams(temp, win, th), value)
    if best is None:
        raise InputError("match: the grid is empty; give at least one temperature and one window")
    return best
