"""Training a WALT twin: the same denoiser on single frames (image mode) or on whole clips (video mode).

Both twins learn from the same Probe World clips, encoded once by the same tokenizer and cached:
- video mode: a sample is one clip's latents ``(C, T', H', W')``;
- image mode: a sample is one frame's latents ``(C, 1, H', W')`` (every frame of every clip, each encoded alone).
``train.batch_size`` counts clips; image mode draws ``batch_size * T'`` frames a step, so both twins see the same
number of tokens per batch and train for the same number of steps.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from einops import rearrange
from torch import nn

from diffprobe.backbones.walt import LatentBackbone
from diffprobe.config import Config, ConfigError
from diffprobe.data import ProbeWorldConfig
from diffprobe.diffusion import diffusion_loss
from diffprobe.features.cache import FeatureCache
from diffprobe.features.sources import ensure_features
from diffprobe.models import WALT, CausalAutoencoder, CausalAutoencoderConfig, WALTConfig
from diffprobe.train.batching import make_batch_fn
from diffprobe.train.config import TrainConfig
from diffprobe.train.distributed import setup_distributed
from diffprobe.train.export import export_model, load_export, read_export
from diffprobe.train.loop import CheckpointHook, fit

# CPU-sized (about 4 minutes a twin on 2 cores): batch 16 runs 4.8-5.5 steps/s here against 3.0 at batch 32. Motion
# shows in the video twin's features only after about 1000 steps (action top-1 0.11 at step 300, 0.15 at 600, 0.23
# at 1200 on the same probe); checkpoints 400 and 800 are kept for the training-budget analysis.
_TINY_TRAIN = {"steps": 1200, "batch_size": 16, "lr": 1.5e-3, "warmup_steps": 50, "ema_decay": 0.99,
               "ema_start": 50, "log_every": 10, "ckpt_every": 400, "keep_steps": [400, 800],
               "min_lr_ratio": 0.1}


@dataclasses.dataclass(frozen=True)
class DenoiserRunConfig(Config):
    """One WALT twin: its mode, the tokenizer run it works in, the world, the network and the optimisation."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "walt-tiny": {"world": ProbeWorldConfig.PRESETS["tiny"], "model": WALTConfig.PRESETS["tiny"],
                      "train": _TINY_TRAIN},
        "walt-S": {"world": ProbeWorldConfig.PRESETS["small"], "model": WALTConfig.PRESETS["S"],
                   "train": {"steps": 100_000, "batch_size": 64, "lr": 2e-4, "warmup_steps": 2000,
                             "ema_decay": 0.9999, "ema_start": 2000, "log_every": 50, "ckpt_every": 5000,
                             "keep_every": 20_000, "precision": "bf16"}},
    }

    mode: Literal["image", "video"] = "video"
    tokenizer: str = ""  #: run directory of a finished tokenizer run
    world: ProbeWorldConfig = dataclasses.field(default_factory=ProbeWorldConfig)
    model: WALTConfig = dataclasses.field(default_factory=WALTConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    per_frame_t: bool = False  #: independent noise levels per latent frame (FVDM-style) in video mode

    def tokenizer_dir(self, run_dir: str | Path) -> Path:
        """The tokenizer run of the twin in ``run_dir``. A relative ``tokenizer`` is looked up relative to the twin's
        run directory first (a study stores ``../../tokenizer``, so its runs work from any directory and can be
        moved), then relative to the working directory (``diffprobe train --tokenizer runs/tok``)."""
        path = Path(self.tokenizer)
        beside = Path(os.path.normpath(Path(run_dir) / path))  # lexical: the twin's own directory may not exist yet
        return beside if not path.is_absolute() and beside.is_dir() else path

    def validate(self) -> None:
        if self.model.num_classes != 0:
            raise ConfigError("DenoiserRunConfig.model.num_classes: the Probe World twins are trained "
                              "unconditionally (as generative models of the world, not of its labels); set it to 0")
        if self.per_frame_t and self.mode == "image":
            raise ConfigError("DenoiserRunConfig.per_frame_t: image mode has one latent frame per sample")


def load_tokenizer(run_dir: str | Path) -> tuple[CausalAutoencoder, dict[str, Any]]:
    """The exported tokenizer of a finished tokenizer run, and its description."""
    meta = read_export(run_dir, "tokenizer")
    model = CausalAutoencoder(CausalAutoencoderConfig.from_dict(meta["config"]["model"]))
    return load_export(run_dir, model).eval(), meta


def latents_identity(tokenizer_sha: str, mode: str) -> str:
    """Backbone identity of a tokenizer's latents as the ``mode`` twin sees them (the WALT backbones' encoder)."""
    return f"latents-{mode}-{tokenizer_sha[:12]}"


def ensure_latents(cfg: ProbeWorldConfig, tokenizer: CausalAutoencoder, tokenizer_sha: str, mode: str, split: str,
                   cache: FeatureCache, device: torch.device, progress: bool = True) -> torch.Tensor:
    """All latents of ``split`` as the ``mode`` twin sees them, encoded once into the cache: video mode
    ``(N, C, T', H', W')``, image mode ``(N * T, C, 1, H', W')``."""
    backbone = LatentBackbone(tokenizer, latents_identity(tokenizer_sha, mode), device, mode=mode)
    z = ensure_features(backbone, cfg, split, "clip", [0], 0.0, 0, cache, dtype=torch.float32,
                        progress=progress)[0].load_all()[1]
    # z: (N, T_f, H', W', C)
    if mode == "image":
        return rearrange(z, "n t h w c -> (n t) c 1 h w")
    return rearrange(z, "n t h w c -> n c t h w")


def _loss(per_frame_t: bool):
    def loss(model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return diffusion_loss(model, batch, generator, per_frame_t=per_frame_t), {}
    return loss


def train_denoiser(cfg: DenoiserRunConfig, run_dir: str | Path, cache: FeatureCache, resume: bool = True,
                   progress: bool = True, on_checkpoint: CheckpointHook | None = None) -> Path:
    """Train (or finish training) one WALT twin in ``run_dir``; returns the exported (EMA) model file."""
    if not cfg.tokenizer:
        raise ConfigError("DenoiserRunConfig.tokenizer: give the run directory of a trained tokenizer")
    ctx = setup_distributed(cfg.train.device)
    tokenizer, meta = load_tokenizer(cfg.tokenizer_dir(run_dir))
    latents = ensure_latents(cfg.world, tokenizer, meta["sha256"], cfg.mode, "train", cache, ctx.device, progress)
    frames = tokenizer.latent_shape(cfg.world.frames, cfg.world.height, cfg.world.width)[1]
    batch_size = cfg.train.batch_size * (frames if cfg.mode == "image" else 1)  # same tokens per batch
    batches = make_batch_fn(latents, batch_size, cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size)
    torch.manual_seed(cfg.train.seed)  # the initial weights are part of the run: same seed, same model
    model = WALT(cfg.model)
    train_cfg = cfg.train.replace(batch_size=batch_size)
    result = fit(model, _loss(cfg.per_frame_t), batches, train_cfg, run_dir, cfg, resume=resume,
                 on_checkpoint=on_checkpoint, progress=progress)
    return export_model(run_dir, result.ema_model(), cfg, kind="denoiser", step=result.step,
                        extra={"mode": cfg.mode, "tokenizer_sha256": meta["sha256"]})


def load_denoiser(run_dir: str | Path) -> tuple[WALT, DenoiserRunConfig, dict[str, Any]]:
    """The exported (EMA) denoiser of a finished twin run, its run config and its description."""
    meta = read_export(run_dir, "denoiser")
    cfg = DenoiserRunConfig.from_dict(meta["config"])
    return load_export(run_dir, WALT(cfg.model)).eval(), cfg, meta
