"""Training a WALT twin: the same denoiser on single frames (image mode) or on whole clips (video mode).

Both twins learn from the same clips (the train role of ``dataset``: Probe World by default, or any dataset spec such
as ``videos:DIR``), encoded once by the same tokenizer and cached:
- video mode: a sample is one clip's latents ``(C, T', H', W')``;
- image mode: a sample is one frame's latents ``(C, 1, H', W')`` (every frame of every clip, each encoded alone).
``train.batch_size`` counts clips; image mode draws ``batch_size * T'`` frames a step, so both twins see the same
number of tokens per batch and train for the same number of steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffprobe.config import ConfigError
from diffprobe.data.splits import resolve_roles
from diffprobe.diffusion import diffusion_loss
from diffprobe.features.cache import FeatureCache
from diffprobe.features.latents import ensure_latents
from diffprobe.models import WALT
from diffprobe.models.exports import load_tokenizer, resolve_recorded_spec
from diffprobe.train.batching import make_batch_fn
from diffprobe.train.export import export_model, load_export, read_export, train_once
from diffprobe.train.loop import CheckpointHook, fit
from diffprobe.train.runs import DenoiserRunConfig, twin_batch_size
from diffprobe.utils.distributed import setup_distributed


def _loss(per_frame_t: bool):
    def loss(model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return diffusion_loss(model, batch, generator, per_frame_t=per_frame_t), {}
    return loss


def train_denoiser(cfg: DenoiserRunConfig, run_dir: str | Path, cache: FeatureCache, resume: bool = True,
                   progress: bool = True, on_checkpoint: CheckpointHook | None = None) -> Path:
    """Train (or finish training) one WALT twin in ``run_dir``; returns the exported (EMA) model file."""
    if not cfg.tokenizer:
        raise ConfigError("DenoiserRunConfig.tokenizer: give the run directory of a trained tokenizer")
    run_dir = Path(run_dir)
    return train_once(run_dir, cfg, "denoiser",
                      lambda: _train_denoiser(cfg, run_dir, cache, resume, progress, on_checkpoint))


def _train_denoiser(cfg: DenoiserRunConfig, run_dir: Path, cache: FeatureCache, resume: bool, progress: bool,
                    on_checkpoint: CheckpointHook | None) -> Path:
    ctx = setup_distributed(cfg.train.device)
    tokenizer, meta = load_tokenizer(cfg.tokenizer_dir(run_dir))
    train = resolve_roles({"train": resolve_recorded_spec(run_dir, cfg.dataset)})["train"]
    latents = ensure_latents(train.clips, tokenizer, meta["sha256"], cfg.mode, cache, ctx.device, progress, ctx=ctx)
    ds = train.dataset
    batch_size = twin_batch_size(cfg, tokenizer.latent_shape(ds.frames, ds.height, ds.width)[1])
    batches = make_batch_fn(latents, batch_size, cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size)
    torch.manual_seed(cfg.train.seed)  # the initial weights are part of the run: same seed, same model
    model = WALT(cfg.model)
    train_cfg = cfg.train.replace(batch_size=batch_size)
    result = fit(model, _loss(cfg.per_frame_t), batches, train_cfg, run_dir, cfg, resume=resume,
                 on_checkpoint=on_checkpoint, progress=progress)
    return export_model(run_dir, result.ema_model(), cfg, kind="denoiser", step=result.step,
                        extra={"mode": cfg.mode, "tokenizer_sha256": meta["sha256"],
                               "clip_size": [ds.frames, ds.height, ds.width]}, ctx=ctx)


def load_denoiser(run_dir: str | Path) -> tuple[WALT, DenoiserRunConfig, dict[str, Any]]:
    """The exported (EMA) denoiser of a finished twin run, its run config and its description."""
    meta = read_export(run_dir, "denoiser")
    cfg = DenoiserRunConfig.from_dict(meta["config"])
    return load_export(run_dir, WALT(cfg.model)).eval(), cfg, meta
