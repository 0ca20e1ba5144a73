"""Training machinery shared by every model diffprobe trains: one loop, checkpoints, EMA, logging, DDP.

See ``docs/training.md``. The tokenizer, the WALT twins and the readout probes each supply a model, a
``loss_fn(model, batch, generator)`` and a ``batches(step)`` function, and call :func:`fit`.
"""

import importlib
from typing import Any

#: the package's public names -> the module that defines them, imported on first use (so importing a run's config,
#: ``diffprobe.train.runs``, does not import the training loop)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["batch_indices", "make_batch_fn"], "diffprobe.train.batching"),
    **dict.fromkeys(["CheckpointError", "checkpoint_dir", "latest_checkpoint", "list_checkpoints", "load_checkpoint",
                     "load_model_weights", "prune_checkpoints", "save_checkpoint"], "diffprobe.train.checkpoint"),
    "TrainConfig": "diffprobe.train.config",
    "EMA": "diffprobe.train.ema",
    **dict.fromkeys(["MetricsLogger", "read_metrics"], "diffprobe.train.logging"),
    **dict.fromkeys(["TrainResult", "fit"], "diffprobe.train.loop"),
    **dict.fromkeys(["build_optimizer", "lr_at", "param_groups"], "diffprobe.train.optim"),
    "step_generator": "diffprobe.train.rng",
    **dict.fromkeys(["DistContext", "cleanup_distributed", "setup_distributed", "unwrap_model"],
                    "diffprobe.utils.distributed"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffprobe.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
