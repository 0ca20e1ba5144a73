"""Feature extraction into the cache: streamed, shard by shard, resumable, several blocks per forward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from diffprobe.backbones.base import Backbone
from diffprobe.features.cache import FeatureCache, FeatureKey

#: view name -> function from videos (n, T, H, W, 3) to the backbone's input
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "clip": lambda video: video,
    "frame0": lambda video: video[:, :1],
}


def extract_features(
    backbone: Backbone,
    load_inputs: Callable[[Sequence[int]], torch.Tensor],
    num_clips: int,
    key: FeatureKey,
    blocks: Sequence[int],
    cache: FeatureCache,
    batch_size: int = 32,
    shard_size: int = 256,
    dtype: torch.dtype = torch.float16,
    encoded: bool = False,
    progress: bool = True,
) -> list[FeatureKey]:
    """Extract ``backbone`` features of clips ``0..num_clips-1`` at every block in ``blocks`` into ``cache``.

    ``load_inputs(indices)`` gives the backbone's input for those clips: uint8 videos (n, T, H, W, 3), or, with
    ``encoded``, the output of ``backbone.encoder`` (fed to ``backbone.features_from_encoded``); a source with an
    ``iterate(batches)`` method (:class:`~diffprobe.features.sources.VideoInputs`) reads its batches ahead.
    ``key`` gives everything but the block (its ``block`` field is ignored). Shards already on disk for every block
    are skipped, so an interrupted run resumes where it stopped. Returns the keys.
    """
    forward = backbone.features_from_encoded if encoded else backbone.features
    read = getattr(load_inputs, "iterate", None) or (lambda batches: map(load_inputs, batches))
    keys = [replace(key, block=b) for b in blocks]
    todo = [k for k in keys if not cache.is_complete(k)]
    if not todo:
        return keys
    num_shards = -(-num_clips // shard_size)
    bar = tqdm(total=num_clips, unit="clip", desc=f"extract {key.backbone} t={key.t:g}", disable=not progress,
               dynamic_ncols=True)
    for shard in range(num_shards):
        lo, hi = shard * shard_size, min(num_clips, (shard + 1) * shard_size)
        if all(cache.has_shard(k, shard) for k in todo):
            bar.update(hi - lo)
            continue
        outs: dict[int, list[torch.Tensor]] = {k.block: [] for k in todo}
        batches = [list(range(start, min(hi, start + batch_size))) for start in range(lo, hi, batch_size)]
        for ids, inputs in zip(batches, read(batches), strict=True):
            inputs = inputs.to(backbone.device)
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
    for k in todo:
        shape = tuple(cache.read_shard(k, 0)[1].shape[1:])
        cache.mark_complete(k, num_clips, shard_size, shape, str(dtype).removeprefix("torch."))
    return keys
