"""Training machinery shared by every model diffprobe trains: one loop, checkpoints, EMA, logging, DDP.

See ``docs/training.md``. The tokenizer, the WALT twins and the readout probes each supply a model, a
``loss_fn(model, batch, generator)`` and a ``batches(step)`` function, and call :func:`fit`.
"""

from diffprobe.train.batching import batch_indices, make_batch_fn
from diffprobe.train.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_weights,
    prune_checkpoints,
    save_checkpoint,
)
from diffprobe.train.config import TrainConfig
from diffprobe.train.ema import EMA
from diffprobe.train.logging import MetricsLogger, read_metrics
from diffprobe.train.loop import TrainResult, fit
from diffprobe.train.optim import build_optimizer, lr_at, param_groups
from diffprobe.train.rng import step_generator
from diffprobe.utils.distributed import DistContext, cleanup_distributed, setup_distributed, unwrap_model

__all__ = [
    "EMA", "CheckpointError", "DistContext", "MetricsLogger", "TrainConfig", "TrainResult", "batch_indices",
    "build_optimizer", "checkpoint_dir", "cleanup_distributed", "fit", "latest_checkpoint", "list_checkpoints",
    "load_checkpoint", "load_model_weights", "lr_at", "make_batch_fn", "param_groups", "prune_checkpoints",
    "read_metrics", "save_checkpoint", "setup_distributed", "step_generator", "unwrap_model",
]
