"""Training a WALT twin: the same denoiser on single frames (image mode) or on whole clips (video mode).

Both twins learn from the same clips (the train role of ``dataset``: Probe World by default, or any dataset spec such
as ``videos:DIR``), encoded once by the same tokenizer and cached:
- video mode: a sample is one clip's latents ``(C, T', H', W')``;
- image mode: a sample is one frame's latents ``(C, 1, H', W')`` (every frame of every clip, each encoded alone).
``train.batch_size`` counts clips; image mode draws ``batch_size * T'`` frames a step, so both twins see the same
number of tokens per batch and train for the same number of steps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from diffprobe.config import Config, ConfigError
from diffprobe.data.splits import resolve_roles
from diffprobe.diffusion import diffusion_loss
from diffprobe.features.cache import FeatureCache
from diffprobe.features.latents import ensure_latents
from diffprobe.models import WALT, WALTConfig
from diffprobe.models.exports import load_tokenizer, resolve_recorded_spec, resolve_tokenizer_dir
from diffprobe.train.batching import make_batch_fn
from diffprobe.train.config import TrainConfig
from diffprobe.train.export import export_model, load_export, read_export, train_once
from diffprobe.train.loop import CheckpointHook, fit
from diffprobe.utils.distributed import setup_distributed

# CPU-sized: a batch of 16 and enough steps for motion to show in the video twin's features (the measurements behind
# both are in docs/training.md); checkpoints 400 and 800 are kept for the training-budget analysis.
_TINY_TRAIN = {"steps": 1200, "batch_size": 16, "lr": 1.5e-3, "warmup_steps": 50, "ema_decay": 0.99,
               "ema_start": 50, "log_every": 10, "ckpt_every": 400, "keep_steps": [400, 800],
               "min_lr_ratio": 0.1}


@dataclasses.dataclass(frozen=True)
class DenoiserRunConfig(Config):
    """One WALT twin: its mode, the tokenizer run it works in, its data, the network and the optimisation."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "walt-tiny": {"dataset": "probeworld:tiny", "model": WALTConfig.PRESETS["tiny"], "train": _TINY_TRAIN},
        "walt-S": {"dataset": "probeworld:small", "model": WALTConfig.PRESETS["S"],
                   "train": {"steps": 100_000, "batch_size": 64, "lr": 2e-4, "warmup_steps": 2000,
                             "ema_decay": 0.9999, "ema_start": 2000, "log_every": 50, "ckpt_every": 5000,
                             "keep_every": 20_000, "precision": "bf16"}},
        "walt-B": {"dataset": "probeworld:small@height=128,width=128", "model": WALTConfig.PRESETS["B"],
                   "train": TrainConfig.PRESETS["base"]},
    }

    mode: Literal["image", "video"] = "video"
    tokenizer: str = ""  #: run directory of a finished tokenizer run
    dataset: str = "probeworld:tiny"  #: dataset spec; the twin trains on its train role (data.splits)
    model: WALTConfig = dataclasses.field(default_factory=WALTConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    per_frame_t: bool = False  #: independent noise levels per latent frame (FVDM-style) in video mode

    def tokenizer_dir(self, run_dir: str | Path) -> Path:
        """The tokenizer run of the twin in ``run_dir`` (see :func:`diffprobe.models.exports.resolve_tokenizer_dir`)."""
        return resolve_tokenizer_dir(run_dir, self.tokenizer)

    def validate(self) -> None:
        if self.model.num_classes != 0:
            raise ConfigError("DenoiserRunConfig.model.num_classes: the Probe World twins are trained "
                              "unconditionally (as generative models of the world, not of its labels); set it to 0")
        if self.per_frame_t and self.mode == "image":
            raise ConfigError("DenoiserRunConfig.per_frame_t: image mode has one latent frame per sample")


def _loss(per_frame_t: bool):
    def loss(model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return diffusion_loss(model, batch, generator, per_frame_t=per_frame_t), {}
    return loss


def twin_batch_size(cfg: DenoiserRunConfig, latent_frames: int) -> int:
    """Samples a training step draws: ``train.batch_size`` clips in video mode; in image mode as many single frames
    as those clips have latent frames (``latent_frames`` T' of a clip's latents), so both twins see the same
    number of tokens per step."""
    return cfg.train.batch_size * (latent_frames if cfg.mode == "image" else 1)


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
