"""Training the causal video tokenizer on a dataset's train role (Probe World by default), then fixing its latent
scale."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from diffprobe.data.splits import resolve_roles
from diffprobe.features.cache import FeatureCache
from diffprobe.features.sources import ensure_videos
from diffprobe.models import CausalAutoencoder, frames_to_input
from diffprobe.models.exports import resolve_recorded_spec
from diffprobe.train.batching import make_batch_fn
from diffprobe.train.export import export_model, train_once
from diffprobe.train.loop import fit
from diffprobe.train.runs import TokenizerRunConfig
from diffprobe.utils.distributed import setup_distributed


def _loss(model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    out = model(frames_to_input(batch), generator)  # the autoencoder's forward is its training loss
    return out["loss"], {"recon": out["recon"], "kl": out["kl"]}


def train_tokenizer(cfg: TokenizerRunConfig, run_dir: str | Path, cache: FeatureCache, resume: bool = True,
                    progress: bool = True) -> Path:
    """Train (or finish training) a tokenizer in ``run_dir``; returns the exported model file.

    After the last step the latent scale and shift are measured on ``stats_clips`` training clips so that
    latents have zero mean and unit standard deviation, and the weights are exported to ``run_dir/model.safetensors``
    with ``run_dir/model.json``.
    """
    run_dir = Path(run_dir)
    return train_once(run_dir, cfg, "tokenizer", lambda: _train_tokenizer(cfg, run_dir, cache, resume, progress))


def _train_tokenizer(cfg: TokenizerRunConfig, run_dir: Path, cache: FeatureCache, resume: bool, progress: bool) -> Path:
    ctx = setup_distributed(cfg.train.device)
    train = resolve_roles({"train": resolve_recorded_spec(run_dir, cfg.dataset)})["train"]
    clips, ds = train.clips, train.dataset
    videos = ensure_videos(clips, cache, progress=progress, ctx=ctx).rows()  # clip i: uint8 (T, H, W, 3), on demand
    torch.manual_seed(cfg.train.seed)  # the initial weights are part of the run: same seed, same model
    model = CausalAutoencoder(cfg.model)
    batches = make_batch_fn(videos, cfg.train.batch_size, cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size)
    result = fit(model, _loss, batches, cfg.train, run_dir, cfg, resume=resume, progress=progress)
    model = result.ema_model().eval()
    n = min(cfg.stats_clips, len(videos))
    chunks = [frames_to_input(torch.stack([videos[j] for j in range(i, min(i + 32, n))]).to(ctx.device))
              for i in range(0, n, 32)]  # (b, C, T, H, W) each
    scale, shift = model.measure_latent_stats(chunks, progress=progress)
    model.set_latent_stats(scale, shift)
    with torch.no_grad():
        x = chunks[0]
        mse = float((model.decode(model.encode(x)) - x).square().mean())
    psnr = 10 * math.log10(4.0 / mse)  # pixels span [-1, 1]: peak-to-peak 2
    return export_model(run_dir, model, cfg, kind="tokenizer", step=result.step,
                        extra={"latent_scale": scale, "latent_shift": shift, "train_psnr_db": psnr,
                               "clip_size": [ds.frames, ds.height, ds.width]}, ctx=ctx)
