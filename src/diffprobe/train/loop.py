"""The one training loop of diffprobe: tokenizer, both WALT twins and the readout probes all train with :func:`fit`.

The loop is model-agnostic. It is given

- ``model``: any ``nn.Module`` (moved to the run's device, wrapped in DDP under torchrun);
- ``loss_fn(model, batch, generator) -> (loss, logs)``: the scalar loss to minimise and a dict of scalars
  to log; every random draw of the step must come from ``generator`` (a ``torch.Generator`` on the model's
  device seeded from ``(seed, step, rank)``);
- ``batches(step) -> batch``: the data of a step as a pure function of the step (see
  :func:`diffprobe.train.batching.make_batch_fn`); tensors in it are moved to the device by the loop.

Step numbering: optimizer step ``i`` (0-based) completes step ``i + 1``; checkpoints, metric rows and
``TrainResult.losses`` are keyed by the number of completed steps.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from diffprobe.config import Config
from diffprobe.train.checkpoint import (
    CheckpointError,
    clean_partial_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_checkpoints_after,
    save_checkpoint,
)
from diffprobe.train.config import TrainConfig
from diffprobe.train.distributed import DistContext, all_reduce_mean, barrier, setup_distributed, wrap_model
from diffprobe.train.ema import EMA
from diffprobe.train.logging import MetricsLogger
from diffprobe.train.optim import build_optimizer, config_lr_at, set_lr
from diffprobe.train.precision import autocast
from diffprobe.train.rng import restore_rng_state, seed_step_globals, step_generator
from diffprobe.utils.io import atomic_write_json

LossFn = Callable[[nn.Module, Any, torch.Generator], tuple[torch.Tensor, Mapping[str, Any]]]
BatchFn = Callable[[int], Any]
CheckpointHook = Callable[[int, Path], None]

RUN_CONFIG_FILE = "config.json"


@dataclasses.dataclass
class TrainResult:
    """What :func:`fit` returns."""

    model: nn.Module  #: the trained model (unwrapped from DDP), holding the raw trained weights
    ema: EMA | None  #: the EMA of the weights, or None when ``ema_decay`` is 0
    step: int  #: steps completed
    losses: dict[int, float]  #: loss (this rank's) of every step run by this call, keyed by completed step
    run_dir: Path

    def ema_model(self) -> nn.Module:
        """A copy of the model carrying the EMA weights (the model itself when the run keeps no EMA)."""
        if self.ema is None:
            return self.model
        clone = copy.deepcopy(self.model)
        self.ema.copy_to(clone)
        return clone


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested dict/list/tuple) batch to ``device``; other leaves are left as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # named tuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _scalar(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"loss_fn log {name!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().float().item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"loss_fn log {name!r} must be a number or a scalar tensor, got {type(value).__name__}")


def _grad_norm(model: nn.Module) -> float:
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms)).item()) if norms else 0.0


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    batches: BatchFn,
    cfg: TrainConfig,
    run_dir: str | Path,
    config: Mapping[str, Any] | Config,
    *,
    resume: bool = True,
    on_checkpoint: CheckpointHook | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` steps, checkpointing into ``run_dir/ckpt``; returns a :class:`TrainResult`.

    ``config`` is the run's full config (written to ``run_dir/config.json`` and into every checkpoint).
    With ``resume=True`` the run continues from ``run_dir``'s latest checkpoint and reproduces the
    uninterrupted run bit for bit (a finished run returns at once); with ``resume=False`` a run directory
    that already holds checkpoints is an error. ``on_checkpoint(step, ckpt_dir)`` runs on rank 0 after
    each checkpoint is written. Under torchrun, build ``batches`` with this process's rank and world size
    (``setup_distributed(cfg.device)`` gives them).
    """
    config_dict = config.to_dict() if isinstance(config, Config) else dict(config)
    ctx = setup_distributed(cfg.device)
    autocast(cfg.precision, ctx.device)  # fail on an unsupported precision before any work
    run_dir = Path(run_dir)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_partial_checkpoints(run_dir)
    barrier(ctx)

    model.to(ctx.device)
    train_model = wrap_model(model, ctx, cfg.ddp_find_unused)  # DDP broadcasts rank 0's weights: wrap before the EMA
    optimizer = build_optimizer(model, cfg)
    ema = EMA(model, cfg.ema_decay, cfg.ema_start) if cfg.ema_decay > 0 else None
    start = _restore(run_dir, model, optimizer, ema, cfg, ctx, resume)
    result = TrainResult(model=model, ema=ema, step=start, losses={}, run_dir=run_dir)
    if start == cfg.steps:
        return result  # a finished run: nothing to do, nothing written
    if ctx.is_main:
        atomic_write_json(run_dir / RUN_CONFIG_FILE, config_dict)

    logger = MetricsLogger(run_dir, start_step=start, enabled=ctx.is_main, tensorboard=cfg.tensorboard)
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {run_dir.name}", unit="step", dynamic_ncols=True,
               disable=not (ctx.is_main and progress))
    try:
        last_time, last_step = time.perf_counter(), start
        for step in range(start, cfg.steps):
            done = step + 1
            lr = config_lr_at(step, cfg)
            set_lr(optimizer, lr)
            seed_step_globals(cfg.seed, step, ctx.rank)
            generator = step_generator(cfg.seed, step, ctx.rank, ctx.device)
            batch = to_device(batches(step), ctx.device)

            train_model.train()
            optimizer.zero_grad(set_to_none=True)
            with autocast(cfg.precision, ctx.device):
                loss, logs = loss_fn(train_model, batch, generator)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError(f"loss_fn must return a scalar tensor loss, got {type(loss).__name__}")
            loss_value = float(loss.detach().float().item())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"step {done}: loss is {loss_value} (last good checkpoint in {run_dir})")
            loss.backward()
            grad_norm = (float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item())
                         if cfg.grad_clip > 0 else None)
            optimizer.step()
            if ema is not None:
                ema.update(model, done)
            result.losses[done] = loss_value
            result.step = done
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.3g}", refresh=False)

            if done % cfg.log_every == 0 or done == cfg.steps:
                now = time.perf_counter()
                metrics = {"train/loss": loss_value, "train/lr": lr,
                           "train/grad_norm": grad_norm if grad_norm is not None else _grad_norm(model)}
                metrics.update({f"train/{k}": _scalar(k, v) for k, v in logs.items()})
                metrics = all_reduce_mean(metrics, ctx)
                metrics["train/steps_per_sec"] = (done - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, done
                logger.log(done, metrics)

            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                _checkpoint(run_dir, done, model, optimizer, ema, config_dict, cfg, ctx, on_checkpoint)
    finally:
        bar.close()
        logger.close()
    return result


def _restore(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None, cfg: TrainConfig,
             ctx: DistContext, resume: bool) -> int:
    """Load the latest checkpoint when resuming; returns the step to start from."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return 0
    step, path = latest
    if not resume:
        raise CheckpointError(f"{run_dir}: holds checkpoints up to {path.name}; resume it (--resume) "
                              f"or train into a new run directory")
    if step > cfg.steps:
        raise CheckpointError(f"{path}: checkpoint is at step {step}, past the configured steps={cfg.steps}")
    try:
        state = load_checkpoint(path, model, optimizer, ema)
    except CheckpointError as e:  # say what to do; the checkpoint itself is left as it is
        raise CheckpointError(f"{e} (to resume from the checkpoint before it, delete {path})") from e
    restore_rng_state(state["rng"])
    if ctx.is_main:
        # Checkpoints newer than `latest` were renamed in by a run killed before it moved the pointer: the
        # resumed run rewrites them, so drop them now rather than let them stand beside the new ones.
        remove_checkpoints_after(run_dir, step)
    barrier(ctx)
    return step


def _checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
                config_dict: dict[str, Any], cfg: TrainConfig, ctx: DistContext,
                on_checkpoint: CheckpointHook | None) -> None:
    """Save (rank 0), prune, run the hook, then let every rank go on."""
    if ctx.is_main:
        path = save_checkpoint(run_dir, step, model, optimizer, config_dict, ema=ema,
                               extra={"world_size": ctx.world_size, "train_config": cfg.to_dict()})
        prune_checkpoints(run_dir, cfg.keep_last, cfg.keep_steps, cfg.keep_every)
        if on_checkpoint is not None:
            on_checkpoint(step, path)
    barrier(ctx)
