"""Feature extraction into the cache: streamed, shard by shard, resumable, several blocks per forward pass.

Under torchrun (a distributed :class:`~diffprobe.utils.distributed.DistContext` passed as ``ctx``) the ranks share
the work: shard ``s`` is extracted by rank ``s % world_size`` into the shared cache (shards are written atomically and
independently, so ranks never write the same file); after every rank is done, rank 0 alone writes ``complete.json``.
Every rank must make the same call. Without ``ctx`` (or in a single process) one process extracts every shard.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from diffprobe.errors import MissingFile
from diffprobe.features.cache import FeatureCache, FeatureKey
from diffprobe.utils.distributed import DistContext, broadcast_object, rank_share, wait_for_all
from diffprobe.utils.lock import folder_lock

#: seconds rank 0 waits for the other ranks' shards to appear before it calls the cache unshared
SHARED_DISK_GRACE = 60.0

#: clips per forward of an extraction, clips per shard, and the dtype features are stored in, unless a caller asks
EXTRACT_BATCH, SHARD_CLIPS, FEATURE_DTYPE = 32, 256, torch.float16

#: ``forward(inputs, clip_ids, blocks, t, noise_seed, ensemble) -> {block: (n, T_f, H_f, W_f, C)}``: what an
#: extraction computes (a backbone's ``features`` or ``features_from_encoded``)
Forward = Callable[[torch.Tensor, torch.Tensor, Sequence[int], float, int, int], dict[int, torch.Tensor]]

#: view name -> function from videos (n, T, H, W, 3) to the backbone's input
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "clip": lambda video: video,
    "frame0": lambda video: video[:, :1],
}


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
    progress: bool = True,
    ctx: DistContext | None = None,
) -> list[FeatureKey]:
    """Compute ``forward`` (on ``device``) of clips ``0..num_clips-1`` at every block in ``blocks`` into ``cache``.

    ``load_inputs(indices)`` gives ``forward``'s input for those clips: uint8 videos (n, T, H, W, 3) for a
    backbone's ``features``, or the output of its ``encoder`` for ``features_from_encoded``; a source with an
    ``iterate(batches)`` method (:class:`~diffprobe.features.sources.VideoInputs`) reads its batches ahead.
    ``key`` gives everything but the block (its ``block`` field is ignored). Shards already on disk for every block
    are skipped, so an interrupted run resumes where it stopped. Returns the keys.

    With a distributed ``ctx`` every rank must call this alike: rank ``r`` extracts shards ``r, r + world_size, ...``
    (the work left is rank 0's view of the disk, broadcast), only rank 0 shows progress (of its shards) and writes
    ``complete.json``, and every rank returns once the features are complete.
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
        _extract_shards(forward, read, device, num_clips, key, todo, cache, batch_size, shard_size, dtype,
                        progress, ctx, distributed)
    return keys


def _extract_shards(forward: Callable, read: Callable, device: torch.device, num_clips: int, key: FeatureKey,
                    todo: list[FeatureKey], cache: FeatureCache, batch_size: int, shard_size: int,
                    dtype: torch.dtype, progress: bool, ctx: DistContext | None, distributed: bool) -> None:
    num_shards = -(-num_clips // shard_size)
    shards = rank_share(range(num_shards), ctx) if distributed else range(num_shards)
    share = sum(min(num_clips, (s + 1) * shard_size) - s * shard_size for s in shards)
    bar = tqdm(total=share, unit="clip", desc=f"extract {key.backbone} t={key.t:g}",
               disable=not progress or (distributed and not ctx.is_main), dynamic_ncols=True)
    for shard in shards:
        lo, hi = shard * shard_size, min(num_clips, (shard + 1) * shard_size)
        if all(cache.has_shard(k, shard) for k in todo):
            bar.update(hi - lo)
            continue
        outs: dict[int, list[torch.Tensor]] = {k.block: [] for k in todo}
        batches = [list(range(start, min(hi, start + batch_size))) for start in range(lo, hi, batch_size)]
        for ids, inputs in zip(batches, read(batches), strict=True):
            inputs = inputs.to(device)
            with torch.no_grad():
                feats = forward(inputs, torch.tensor(ids), [k.block for k in todo], key.t, key.noise_seed,
                                key.ensemble)
            for b, f in feats.items():
                outs[b].append(f.to("cpu", dtype))  # (b, T_f, H_f, W_f, C)
            bar.update(len(ids))
        index = torch.arange(lo, hi)
        for k in todo:
            cache.write_shard(k, shard, index, torch.cat(outs[k.block]))
    bar.close()
    if distributed:
        wait_for_all(ctx)  # every shard is on disk
    if not distributed or ctx.is_main:
        if distributed:
            _check_shards(cache, todo, num_shards)
        for k in todo:
            shape = tuple(cache.read_shard(k, 0)[1].shape[1:])
            cache.mark_complete(k, num_clips, shard_size, shape, str(dtype).removeprefix("torch."))
    if distributed:
        wait_for_all(ctx)  # complete.json is written before any rank reads the features


def _check_shards(cache: FeatureCache, keys: Sequence[FeatureKey], num_shards: int) -> None:
    """On rank 0, after the others say they are done: every shard of ``keys`` is on disk (allowing a network
    filesystem :data:`SHARED_DISK_GRACE` seconds to show them), else an error naming the first missing file."""
    deadline = time.monotonic() + SHARED_DISK_GRACE
    while True:
        missing = [cache.shard_path(k, s) for k in keys for s in range(num_shards) if not cache.has_shard(k, s)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise MissingFile(f"{missing[0]}: written by another rank but not seen by rank 0 ({len(missing)} shard(s) "
                              "missing); the cache must be on a filesystem every rank shares")
        time.sleep(1.0)
