"""The config of every run diffprobe trains (tokenizer, WALT twin, Fréchet feature network): what a study, the
estimate and ``diffprobe config show`` read without importing the trainers (``train.tokenizer``, ``train.denoiser``,
``train.feature_net``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

from diffprobe.config import Config, ConfigError
from diffprobe.data.registry import DEFAULT_DATASET
from diffprobe.metrics.i3d import I3DConfig
from diffprobe.models import CausalAutoencoderConfig, WALTConfig
from diffprobe.models.exports import resolve_tokenizer_dir
from diffprobe.train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class TokenizerRunConfig(Config):
    """One tokenizer training run: the data it learns from, the autoencoder, the optimisation."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"dataset": "probeworld:tiny", "model": CausalAutoencoderConfig.PRESETS["tiny"],
                 "train": {"steps": 300, "batch_size": 8, "lr": 2e-3, "warmup_steps": 30, "ema_decay": 0.0,
                           "log_every": 10, "ckpt_every": 100, "min_lr_ratio": 0.05}},
        "small": {"dataset": "probeworld:small", "model": CausalAutoencoderConfig.PRESETS["small"],
                  "train": {"steps": 20_000, "batch_size": 32, "lr": 1e-3, "warmup_steps": 500, "log_every": 50,
                            "ckpt_every": 1000}},
        # 128 px clips -> WALT's 8 x 5 x 16 x 16 latents, for the 8-GPU study, at half the channels of the base
        # autoencoder (whose full width would cost 4x the FLOPs of both twins together; bf16, global batch).
        "base": {"dataset": "probeworld:small@height=128,width=128",
                 "model": {**CausalAutoencoderConfig.PRESETS["base"], "base_channels": 64},
                 "train": {"steps": 20_000, "batch_size": 32, "lr": 5e-4, "warmup_steps": 500, "log_every": 50,
                           "ckpt_every": 1000, "precision": "bf16"}},
    }

    dataset: str = DEFAULT_DATASET  #: dataset spec; the tokenizer trains on its train role (data.splits)
    model: CausalAutoencoderConfig = dataclasses.field(default_factory=CausalAutoencoderConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    stats_clips: int = 512  #: training clips used to measure the latent scale after training


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
    dataset: str = DEFAULT_DATASET  #: dataset spec; the twin trains on its train role (data.splits)
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


def twin_batch_size(cfg: DenoiserRunConfig, latent_frames: int) -> int:
    """Samples a training step draws: ``train.batch_size`` clips in video mode; in image mode as many single frames
    as those clips have latent frames (``latent_frames`` T' of a clip's latents), so both twins see the same
    number of tokens per step."""
    return cfg.train.batch_size * (latent_frames if cfg.mode == "image" else 1)


@dataclasses.dataclass(frozen=True)
class FeatureNetRunConfig(Config):
    """The Fréchet feature network: an I3D classifying the dataset's class fields (``net.num_classes`` is not used:
    the logits are sized from the dataset's label spaces, and the export's ``net`` records the network built)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"dataset": "probeworld:tiny",
                 "net": {**I3DConfig.PRESETS["tiny"], "dropout": 0.0},
                 "train": {"steps": 150, "batch_size": 32, "lr": 2e-3, "warmup_steps": 15, "log_every": 10,
                           "ckpt_every": 50}},
    }

    dataset: str = DEFAULT_DATASET  #: dataset spec: trains on its train role, is scored on its val role
    net: I3DConfig = dataclasses.field(default_factory=I3DConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    calibration_clips: int = 512  #: training clips whose statistics replace the BatchNorm running averages
