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

The step itself never waits for the device: losses, gradient norms and logs stay device tensors, and the host reads
them (one synchronisation) every ``log_every`` steps and before each checkpoint, where a non-finite loss stops the
run naming its step, before anything after it is saved.
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
from diffprobe.train.batching import BatchFeed, resolve_workers
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
from diffprobe.train.ema import EMA
from diffprobe.train.logging import MetricsLogger
from diffprobe.train.optim import build_optimizer, config_lr_at, set_lr
from diffprobe.train.precision import autocast
from diffprobe.train.rng import restore_rng_state, seed_step_globals, step_generator
from diffprobe.train.rundir import RUN_CONFIG_FILE, check_same_run
from diffprobe.utils.distributed import DistContext, all_reduce_mean, barrier, setup_distributed, wrap_model
from diffprobe.utils.io import atomic_write_json
from diffprobe.utils.runtime import cuda_tf32

LossFn = Callable[[nn.Module, Any, torch.Generator], tuple[torch.Tensor, Mapping[str, Any]]]
BatchFn = Callable[[int], Any]
CheckpointHook = Callable[[int, Path], None]



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
    """Move every tensor in a (nested dict/list/tuple) batch to ``device``; other leaves are left as they are.

    To CUDA, host tensors are pinned first (if they are not already) and copied ``non_blocking``, so the copy runs
    asynchronously with the host.
    """
    if isinstance(batch, torch.Tensor):
        if device.type != "cuda":
            return batch.to(device)
        if batch.device.type == "cpu" and not batch.is_pinned():
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # named tuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _scalar(name: str, value: Any, device: torch.device) -> torch.Tensor | float:
    """A ``loss_fn`` log as a 0-d fp32 tensor on ``device`` (read later, with the others) or a float."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"loss_fn log {name!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.detach().float().reshape(()).to(device)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"loss_fn log {name!r} must be a number or a scalar tensor, got {type(value).__name__}")


def _grad_norm(model: nn.Module, device: torch.device) -> torch.Tensor:
    """The global gradient norm, a 0-d tensor on ``device`` (0 when no parameter has a gradient)."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=device)


def _read(values: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Tensors and floats -> floats, with one device-to-host transfer for all the tensors."""
    names = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    host = torch.stack([values[k] for k in names]).tolist() if names else []  # (K,): the one synchronisation
    read = dict(zip(names, host, strict=True))
    return {k: read[k] if k in read else float(v) for k, v in values.items()}


class _PendingLosses:
    """The losses of the steps since the last read, as device tensors; :meth:`read` syncs once for all of them."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.values: list[torch.Tensor] = []

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.steps.append(step)
        self.values.append(loss.detach().float().reshape(()))

    def read(self, run_dir: Path, extra: Mapping[str, torch.Tensor | float] | None = None,
             ) -> tuple[dict[int, float], dict[str, float]]:
        """``({step: loss}, extra as floats)`` (one synchronisation); a non-finite loss raises naming its step."""
        tensors = {f"loss/{s}": v for s, v in zip(self.steps, self.values, strict=True)}
        values = _read({**tensors, **(extra or {})})
        losses = {s: values.pop(f"loss/{s}") for s in self.steps}
        first, last = (self.steps[0], self.steps[-1]) if self.steps else (0, 0)
        self.steps, self.values = [], []
        for step, value in losses.items():
            if not math.isfinite(value):
                raise FloatingPointError(f"step {step}: loss is {value} (read with steps {first}-{last}; nothing "
                                         f"after step {first - 1} was saved; last good checkpoint in {run_dir})")
        return losses, values


def _compiled(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``torch.compile(model)`` when ``cfg.compile`` (the caller keeps the plain module for state dicts)."""
    return torch.compile(model) if cfg.compile else model


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
        if isinstance(config, Config):
            check_same_run(run_dir, config)  # a folder holding another run is never trained over
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_partial_checkpoints(run_dir)
    barrier(ctx)

    model.to(ctx.device)
    # DDP broadcasts rank 0's weights: wrap before the EMA. Compile the DDP wrapper (its optimizer splits the graph
    # at gradient buckets); `model` itself stays the plain module, so state dicts carry no `_orig_mod.` prefix.
    train_model = _compiled(wrap_model(model, ctx, cfg.ddp_find_unused), cfg)
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
    pending = _PendingLosses()
    feed: BatchFeed | None = None
    try:
        feed = BatchFeed(batches, start, cfg.steps, cfg.seed, ctx.rank,
                         resolve_workers(cfg.data_workers, ctx.device), pin=ctx.device.type == "cuda")
        with cuda_tf32(ctx.device, cfg.tf32):
            last_time, last_step = time.perf_counter(), start
            for step in range(start, cfg.steps):
                done = step + 1
                lr = config_lr_at(step, cfg)
                set_lr(optimizer, lr)
                seed_step_globals(cfg.seed, step, ctx.rank)
                generator = step_generator(cfg.seed, step, ctx.rank, ctx.device)
                batch = to_device(feed.get(step), ctx.device)

                train_model.train()
                optimizer.zero_grad(set_to_none=True)
                with autocast(cfg.precision, ctx.device):
                    loss, logs = loss_fn(train_model, batch, generator)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError(f"loss_fn must return a scalar tensor loss, got {type(loss).__name__}")
                pending.add(done, loss)
                loss.backward()
                grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                             if cfg.grad_clip > 0 else None)  # a device tensor: clipping does not sync
                optimizer.step()
                if ema is not None:
                    ema.update(model, done)
                result.step = done
                bar.update(1)

                log_now = done % cfg.log_every == 0 or done == cfg.steps
                ckpt_now = done % cfg.ckpt_every == 0 or done == cfg.steps
                if log_now:
                    metrics: dict[str, torch.Tensor | float] = {
                        "train/lr": lr,
                        "train/grad_norm": grad_norm if grad_norm is not None else _grad_norm(model, ctx.device)}
                    metrics.update({f"train/{k}": _scalar(k, v, ctx.device) for k, v in logs.items()})
                    losses, values = pending.read(run_dir, metrics)  # the host waits for the device here only
                    result.losses.update(losses)
                    values = {"train/loss": losses[done], **values}  # this step's loss, read with the pending ones
                    values = all_reduce_mean(values, ctx)
                    now = time.perf_counter()
                    values["train/steps_per_sec"] = (done - last_step) / max(now - last_time, 1e-9)
                    last_time, last_step = now, done
                    logger.log(done, values)
                    bar.set_postfix(loss=f"{values['train/loss']:.4g}", lr=f"{lr:.3g}", refresh=False)
                elif ckpt_now:
                    result.losses.update(pending.read(run_dir)[0])  # nothing non-finite may be saved

                if ckpt_now:
                    _checkpoint(run_dir, done, model, optimizer, ema, config_dict, cfg, ctx, on_checkpoint)
    finally:
        if feed is not None:
            feed.close()
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
