"""Feature extraction into the cache: streamed, shard by shard, resumable, several blocks per forward pass.

Under torchrun (a distributed :class:`~diffprobe.utils.distributed.DistContext` passed as ``ctx``) the ranks share
the work: unit ``u`` (the clips of one shard of the block with the largest shards) is extracted by rank
``u % world_size`` into the shared cache (shards are written atomically and independently, so ranks never write the
same file); after every rank is done, rank 0 alone writes ``complete.json``.
Every rank must make the same call. Without ``ctx`` (or in a single process) one process extracts every shard.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffprobe.errors import FileProblem, InputError, MissingFile
from diffprobe.features.cache import FeatureCache, FeatureKey
from diffprobe.features.pooling import Pool
from diffprobe.utils.chunks import HalvingChunks
from diffprobe.utils.distributed import DistContext, broadcast_object, rank_share, wait_for_all
from diffprobe.utils.lock import folder_lock

#: seconds rank 0 waits for the other ranks' shards to appear before it calls the cache unshared
SHARED_DISK_GRACE = 60.0

#: clips per forward of an extraction, most clips per shard, and the dtype features are stored in, unless a caller asks
EXTRACT_BATCH, SHARD_CLIPS, FEATURE_DTYPE = 32, 256, torch.float16
#: most bytes one shard of one block holds: a shard is filled in memory and written when full, so an extraction holds
#: at most one shard per block it writes (plus one batch), whatever the features' size
SHARD_BYTES = 256 << 20

#: ``forward(inputs, clip_ids, blocks, t, noise_seed, ensemble) -> {block: (n, T_f, H_f, W_f, C)}``: what an
#: extraction computes (a backbone's ``features`` or ``features_from_encoded``)
Forward = Callable[[torch.Tensor, torch.Tensor, Sequence[int], float, int, int], dict[int, torch.Tensor]]

#: view name -> function from videos (n, T, H, W, 3) to the backbone's input
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "clip": lambda video: video,
    "frame0": lambda video: video[:, :1],
}


def view_frames(view: str, frames: int) -> int:
    """Frames a backbone sees of a ``frames``-frame clip through ``view``."""
    return VIEWS[view](torch.empty(1, frames, 1, 1, 3)).shape[1]


def shard_clips(shape: Sequence[int], dtype: torch.dtype, shard_size: int = SHARD_CLIPS,
                shard_bytes: int = SHARD_BYTES) -> int:
    """Clips in each shard of features of one clip's ``shape`` (T_f, H_f, W_f, C) in ``dtype``: the largest power of
    two within ``shard_size`` clips and ``shard_bytes`` bytes (at least 1). Powers of two make every block's shards
    whole parts of the largest one's, so the blocks of one pass fill and write their shards in step."""
    clip_bytes = math.prod(shape) * dtype.itemsize
    most = max(1, min(shard_size, shard_bytes // clip_bytes))
    return 1 << (most.bit_length() - 1)


def extract_features(
    forward: Forward,
    device: torch.device,
    load_inputs: Callable[[Sequence[int]], torch.Tensor],
    num_clips: int,
    key: FeatureKey,
    blocks: Sequence[int],
    cache: FeatureCache,
    batch_size: int = EXTRACT_BATCH,
    shard_size: int = SHARD_CLIPS,
    dtype: torch.dtype = FEATURE_DTYPE,
    shard_bytes: int = SHARD_BYTES,
    progress: bool = True,
    ctx: DistContext | None = None,
) -> list[FeatureKey]:
    """Compute ``forward`` (on ``device``) of clips ``0..num_clips-1`` at every block in ``blocks`` into ``cache``.

    ``load_inputs(indices)`` gives ``forward``'s input for those clips: uint8 videos (n, T, H, W, 3) for a
    backbone's ``features``, or the output of its ``encoder`` for ``features_from_encoded``; a source with an
    ``iterate(batches)`` method (:class:`~diffprobe.features.sources.VideoInputs`) reads its batches ahead.
    ``key`` gives everything but the block (its ``block`` field is ignored); its ``pool`` averages each block's
    tokens to that grid before they are cached (:mod:`~diffprobe.features.pooling`). Each block's shards hold
    :func:`shard_clips` clips (at most ``shard_size`` and ``shard_bytes``); a shard is filled in place as its
    batches come and written when full, so memory stays bounded by one shard per block. Shards already on disk are
    skipped, so an interrupted run resumes where it stopped. A forward that runs out of device memory is retried on
    half the clips, and the extraction goes on at that batch size (said once). Returns the keys.

    With a distributed ``ctx`` every rank must call this alike: rank ``r`` extracts units ``r, r + world_size, ...``
    (a unit: the clips of one shard of the block with the largest shards; the work left is rank 0's view of the
    disk, broadcast), only rank 0 shows progress (of its units) and writes ``complete.json``, and every rank returns
    once the features are complete.
    """
    read = getattr(load_inputs, "iterate", None) or (lambda batches: map(load_inputs, batches))
    distributed = ctx is not None and ctx.is_distributed
    keys = [replace(key, block=b) for b in blocks]
    todo = [k for k in keys if not cache.is_complete(k)]
    if distributed:
        todo = broadcast_object(todo, ctx)  # every rank takes the same path, whatever its view of a shared disk
    if not todo:
        return keys
    # one extraction writes a (backbone, clips, view) folder at a time: a second process is refused, not mixed in
    with folder_lock(cache.path(key).parent, what="feature extraction"):
        fit = Fitting(forward, device, key, dtype, batch_size)
        shapes = {k: _shard0_shape(cache, k) for k in todo}  # a resumed extraction: from the shards on disk
        if None in shapes.values():  # else from one clip's forward
            one = fit(load_inputs([0]), [0], [k.block for k in todo])
            shapes = {k: tuple(one[k.block].shape[1:]) for k in todo}
        sizes = {k: shard_clips(shapes[k], dtype, shard_size, shard_bytes) for k in todo}
        if not distributed or ctx.is_main:
            check_disk(cache, [(k, shapes[k], num_clips) for k in todo], dtype)
        _extract_shards(fit, read, num_clips, key, todo, sizes, cache, progress, ctx, distributed)
        if not distributed or ctx.is_main:
            if distributed:
                _check_shards(cache, todo, num_clips, sizes)
            for k in todo:
                cache.mark_complete(k, num_clips, sizes[k], shapes[k], str(dtype).removeprefix("torch."))
        if distributed:
            wait_for_all(ctx)  # complete.json is written before any rank reads the features
    return keys


class Fitting:
    """``forward`` on as many clips at a time as fit: a batch whose forward runs out of device memory is split in
    halves, and later batches go in pieces of the size that fit (:class:`~diffprobe.utils.chunks.HalvingChunks`).
    Features leave the device in the cache's dtype as they come."""

    def __init__(self, forward: Forward, device: torch.device, key: FeatureKey, dtype: torch.dtype,
                 batch_size: int) -> None:
        self.forward, self.device, self.key, self.dtype = forward, device, key, dtype
        self.chunks = HalvingChunks(batch_size, "clips", f"extract {key.backbone}", "forward")
        self.pool = Pool.parse(key.pool) if key.pool else None

    @property
    def size(self) -> int:
        """Most clips per forward (halved on out-of-memory)."""
        return self.chunks.size

    def __call__(self, inputs: torch.Tensor, ids: Sequence[int], blocks: Sequence[int]) -> dict[int, torch.Tensor]:
        parts = self.chunks.run(len(ids), lambda s, n: self._one(inputs[s:s + n], ids[s:s + n], blocks))
        return {b: torch.cat([p[b] for p in parts]) if len(parts) > 1 else parts[0][b] for b in blocks}

    def _one(self, inputs: torch.Tensor, ids: Sequence[int], blocks: Sequence[int]) -> dict[int, torch.Tensor]:
        with torch.no_grad():
            feats = self.forward(inputs.to(self.device), torch.tensor(list(ids)), list(blocks), self.key.t,
                                 self.key.noise_seed, self.key.ensemble)
        if self.pool is not None:  # on the device, before the features leave it
            feats = {b: self.pool(feats[b]) for b in blocks}
        return {b: feats[b].to("cpu", self.dtype) for b in blocks}  # (n, T_f, H_f, W_f, C)


def _extract_shards(fit: Fitting, read: Callable, num_clips: int, key: FeatureKey, todo: list[FeatureKey],
                    sizes: dict[FeatureKey, int], cache: FeatureCache, progress: bool, ctx: DistContext | None,
                    distributed: bool) -> None:
    """Fill and write every missing shard of ``todo``: batches never cross a shard boundary of any block, and a
    block whose shard is on disk already is not computed again for those clips."""
    unit, step = max(sizes.values()), min(sizes.values())
    units = range(-(-num_clips // unit))
    mine = rank_share(units, ctx) if distributed else units
    for k in todo:
        _check_grid(cache, k, sizes[k], num_clips)
    batches: list[tuple[list[int], list[FeatureKey]]] = []  # (clip ids, the keys that still need them)
    for u in mine:
        for lo in range(u * unit, min(num_clips, (u + 1) * unit), step):
            need = [k for k in todo if not cache.has_shard(k, lo // sizes[k])]
            hi = min(num_clips, lo + step)
            batches += [(list(range(b, min(hi, b + fit.size))), need) for b in range(lo, hi, fit.size)] if need else \
                [(list(range(lo, hi)), [])]
    bar = tqdm(total=sum(len(ids) for ids, _ in batches), unit="clip", desc=f"extract {key.backbone} t={key.t:g}",
               disable=not progress or (distributed and not ctx.is_main), dynamic_ncols=True)
    filling: dict[FeatureKey, torch.Tensor] = {}  # key -> the shard being filled (n, T_f, H_f, W_f, C)
    work = [(ids, need) for ids, need in batches if need]
    bar.update(sum(len(ids) for ids, need in batches if not need))
    for (ids, need), inputs in zip(work, read([ids for ids, _ in work]), strict=True):
        feats = fit(inputs, ids, [k.block for k in need])
        for k in need:
            shard, n = ids[0] // sizes[k], sizes[k]
            lo, hi = shard * n, min(num_clips, (shard + 1) * n)
            if k not in filling:
                filling[k] = torch.empty((hi - lo, *feats[k.block].shape[1:]), dtype=feats[k.block].dtype)
            filling[k][ids[0] - lo:ids[-1] + 1 - lo] = feats[k.block]
            if ids[-1] + 1 == hi:  # the shard is full
                cache.write_shard(k, shard, torch.arange(lo, hi), filling.pop(k))
        bar.update(len(ids))
    bar.close()
    if distributed:
        wait_for_all(ctx)  # every shard is on disk


def check_disk(cache: FeatureCache, features: Sequence[tuple[FeatureKey, tuple[int, ...], int]],
               dtype: torch.dtype) -> None:
    """Before features are written: the features still to write (each key's per-clip shape and clip count, less its
    shards already on disk) fit the free space of the cache's disk, else an :class:`~diffprobe.errors.InputError`
    naming the needed and free GB."""
    needed = 0
    for key, shape, num_clips in features:
        written = sum(f.stat().st_size for f in cache.path(key).glob("shard-*.safetensors"))
        needed += max(0, num_clips * math.prod(shape) * dtype.itemsize - written)
    free = free_bytes(cache.root)
    if needed > free:
        raise InputError(f"{cache.root}: these features need {needed / 1e9:.1f} GB and the disk has {free / 1e9:.1f} "
                         f"GB free; free space, extract fewer blocks or clips, stream them, or put the cache "
                         f"elsewhere")


def free_bytes(path: Path) -> int:
    """Free bytes of the disk ``path`` is (or would be made) on: its nearest existing folder's."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _shard0_shape(cache: FeatureCache, key: FeatureKey) -> tuple[int, ...] | None:
    """The feature shape (T_f, H_f, W_f, C) of ``key``'s shard 0 from its header; None: not on disk."""
    return cache.shard_header(key, 0)[1] if cache.has_shard(key, 0) else None


def _check_grid(cache: FeatureCache, key: FeatureKey, size: int, num_clips: int) -> None:
    """A shard on disk from an earlier run must hold the clips this run's shard of that number holds (shards cut at
    another size, by an earlier version, cannot be resumed): an error naming the folder otherwise."""
    for shard in range(-(-num_clips // size)):
        if cache.has_shard(key, shard):
            rows = cache.shard_header(key, shard)[0]
            if rows != min(num_clips, (shard + 1) * size) - shard * size:
                raise FileProblem(f"{cache.shard_path(key, shard)}: holds {rows} clips, not the {size} a shard of "
                                  f"these features holds now (written by another version); delete "
                                  f"{cache.path(key)} to extract it again")


def _check_shards(cache: FeatureCache, keys: Sequence[FeatureKey], num_clips: int,
                  sizes: dict[FeatureKey, int]) -> None:
    """On rank 0, after the others say they are done: every shard of ``keys`` is on disk (allowing a network
    filesystem :data:`SHARED_DISK_GRACE` seconds to show them), else an error naming the first missing file."""
    deadline = time.monotonic() + SHARED_DISK_GRACE
    while True:
        missing = [cache.shard_path(k, s) for k in keys for s in range(-(-num_clips // sizes[k]))
                   if not cache.has_shard(k, s)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise MissingFile(f"{missing[0]}: written by another rank but not seen by rank 0 ({len(missing)} shard(s) "
                              "missing); the cache must be on a filesystem every rank shares")
        time.sleep(1.0)
