"""The training-loop config shared by every model diffprobe trains (tokenizer, WALT twins, readout probes)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

from diffprobe.config import Config, ConfigError


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """Optimisation, EMA, checkpointing and logging settings of one training run.

    ``batch_size`` is the *global* batch: under torchrun each of the ``world_size`` ranks draws
    ``batch_size // world_size`` examples a step, so a run sees the same data on one GPU or on many.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU-sized: a few minutes on a laptop with the tiny models.
        "tiny": {"steps": 2000, "batch_size": 32, "lr": 1e-3, "warmup_steps": 100, "ema_decay": 0.999,
                 "ema_start": 100, "log_every": 10, "ckpt_every": 250, "keep_steps": (500, 1000)},
        # GPU-sized: bf16 autocast, longer schedule, slower EMA.
        "base": {"steps": 100_000, "batch_size": 256, "lr": 1e-4, "warmup_steps": 5000, "ema_decay": 0.9999,
                 "ema_start": 5000, "log_every": 50, "ckpt_every": 5000, "keep_every": 20_000,
                 "precision": "bf16"},
    }

    steps: int = 1000  #: total optimizer steps of the run
    batch_size: int = 32  #: global batch size (all ranks together)
    lr: float = 3e-4  #: peak learning rate, reached at the end of warm-up
    weight_decay: float = 0.01  #: AdamW decoupled weight decay (matrices only, see ``optim.param_groups``)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0  #: linear warm-up steps
    min_lr_ratio: float = 0.1  #: cosine decay ends at ``lr * min_lr_ratio``
    grad_clip: float = 1.0  #: max global gradient norm; 0 disables clipping
    ema_decay: float = 0.0  #: EMA decay of the weights; 0 disables EMA
    ema_start: int = 0  #: the EMA copies the weights until this step, then averages
    log_every: int = 10  #: steps between metric rows
    ckpt_every: int = 100  #: steps between checkpoints (one is also written at the last step)
    keep_last: int = 3  #: number of most recent checkpoints kept; 0 keeps every checkpoint
    keep_steps: tuple[int, ...] = ()  #: checkpoint steps never pruned
    keep_every: int = 0  #: checkpoints at multiples of this are never pruned; 0 disables
    seed: int = 0
    device: str = "auto"  #: "auto" (CUDA, then MPS, then CPU) or any torch device name
    precision: Literal["fp32", "bf16"] = "fp32"  #: "bf16" runs forward passes under bf16 autocast
    tensorboard: bool = True  #: also write TensorBoard events under ``run_dir/tb``
    ddp_find_unused: bool = False  #: DDP ``find_unused_parameters`` (for models with conditionally used params)
    #: TF32 tensor cores for fp32 matmuls and cuDNN convolutions on CUDA during training (no effect elsewhere)
    tf32: bool = True
    #: ``torch.compile`` the model for training (checkpoints still hold the plain module's state dict)
    compile: bool = False
    #: processes preparing batches ahead of the step (pinned memory on CUDA); "auto": up to 4 on CUDA, 0 elsewhere.
    #: Workers reproduce the in-process batches and RNG states exactly; ``batches(step)`` must then build host tensors
    data_workers: int | Literal["auto"] = "auto"

    def validate(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size, "log_every": self.log_every,
                    "ckpt_every": self.ckpt_every}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"TrainConfig.{name}: must be >= 1, got {value}")
        non_negative = {"warmup_steps": self.warmup_steps, "ema_start": self.ema_start, "keep_last": self.keep_last,
                        "keep_every": self.keep_every, "weight_decay": self.weight_decay,
                        "grad_clip": self.grad_clip, "seed": self.seed}
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"TrainConfig.{name}: must be >= 0, got {value}")
        if self.warmup_steps > self.steps:
            raise ConfigError(f"TrainConfig.warmup_steps: {self.warmup_steps} exceeds steps={self.steps}; lower it "
                              f"(a command line that sets train.steps alone scales the warm-up with it)")
        if not self.lr > 0:
            raise ConfigError(f"TrainConfig.lr: must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"TrainConfig.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"TrainConfig.ema_decay: must be in [0, 1), got {self.ema_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"TrainConfig.betas: each must be in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ConfigError(f"TrainConfig.eps: must be > 0, got {self.eps}")
        if self.data_workers != "auto" and self.data_workers < 0:
            raise ConfigError(f"TrainConfig.data_workers: must be >= 0 or 'auto', got {self.data_workers}")
        bad = [s for s in self.keep_steps if s < 1]
        if bad:
            raise ConfigError(f"TrainConfig.keep_steps: steps must be >= 1, got {bad}")
