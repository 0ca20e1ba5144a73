"""Checkpoint directories: written atomically as a whole, loaded strictly, pruned by policy.

Layout under a run directory::

    run_dir/ckpt/
        step-00000100/
            model.safetensors    # the trained weights (model.state_dict(), DDP prefix stripped)
            ema.safetensors      # EMA weights, same keys (only when the run keeps an EMA)
            config.json          # the run's full config dict
            trainer_state.pt     # step, optimizer state, RNG states, extra loop state
        step-00000200/
        latest                   # text: the name of the newest complete checkpoint directory

A checkpoint is written into ``ckpt/.tmp-*`` and renamed to ``step-XXXXXXXX`` when complete; ``latest`` is
rewritten (atomically) last. A run killed at any moment therefore leaves only complete checkpoints behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffprobe.models.exports import (
    CKPT_EMA_FILE,
    CKPT_MODEL_FILE,
    CKPT_SUBDIR,
    CheckpointError,
    checkpoint_dir,
    load_checkpoint_weights,
    load_into_module,
    read_tensors,
)
from diffprobe.train.ema import EMA
from diffprobe.train.rng import capture_rng_state
from diffprobe.utils.distributed import unwrap_model
from diffprobe.utils.io import atomic_path, atomic_write_json, atomic_write_text, save_tensors

LATEST = "latest"
MODEL_FILE = CKPT_MODEL_FILE
EMA_FILE = CKPT_EMA_FILE
CONFIG_FILE = "config.json"
STATE_FILE = "trainer_state.pt"
STATE_FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_root(run_dir: str | Path) -> Path:
    """The folder holding a run's checkpoints (``run_dir/ckpt``)."""
    return Path(run_dir) / CKPT_SUBDIR


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, path)``, oldest first (empty if there are none)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    """The checkpoint named by ``ckpt/latest`` as ``(step, path)``; ``None`` for a run without checkpoints."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if not pointer.exists():
        listed = list_checkpoints(run_dir)
        # Killed between renaming its first checkpoint in and writing the pointer: that checkpoint is complete.
        return listed[-1] if listed else None
    name = pointer.read_text().strip()
    match = _STEP_DIR.match(name)
    if not match:
        raise CheckpointError(f"{pointer}: expected a checkpoint directory name like step-00000100, got {name!r}")
    path = root / name
    if not path.is_dir():
        raise CheckpointError(f"{pointer}: points to {name!r}, which does not exist")
    return int(match.group(1)), path


def clean_partial_checkpoints(run_dir: str | Path) -> None:
    """Remove leftovers of a killed save or prune (``ckpt/.tmp-*``, ``ckpt/.trash-*``, ``ckpt/*.tmp``)."""
    root = checkpoint_root(run_dir)
    if root.is_dir():
        for path in root.iterdir():
            if not (path.name.startswith((".tmp-", ".trash-")) or path.name.endswith(".tmp")):
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def _remove_dir(path: Path) -> None:
    """Rename out of sight first, then delete, so a half-deleted directory is never taken for a checkpoint."""
    trash = Path(tempfile.mkdtemp(prefix=f".trash-{path.name}-", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash)


def _cpu_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Copies break storage sharing (tied weights), which safetensors refuses to save.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: Mapping[str, Any],
    *,
    ema: EMA | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` atomically and point ``latest`` at it; returns its directory.

    ``extra`` is stored in ``trainer_state.pt`` (tensors, numbers, strings, lists and dicts of them).
    An existing directory for the same step (left by a run killed before it updated ``latest``) is replaced.
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(run_dir, step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        save_tensors(tmp / MODEL_FILE, _cpu_state(unwrap_model(model).state_dict()), {"step": str(step)})
        if ema is not None:
            save_tensors(tmp / EMA_FILE, _cpu_state(ema.state_dict()), {"step": str(step), "decay": str(ema.decay)})
        atomic_write_json(tmp / CONFIG_FILE, dict(config))
        state = {
            "format": STATE_FORMAT,
            "step": step,
            "optimizer": optimizer.state_dict(),
            "rng": capture_rng_state(),
            "has_ema": ema is not None,
            "extra": dict(extra or {}),
        }
        with atomic_path(tmp / STATE_FILE) as state_tmp:
            torch.save(state, state_tmp)
        if final.exists():
            _remove_dir(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    atomic_write_text(root / LATEST, final.name + "\n")
    return final


def read_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """Read ``trainer_state.pt`` (on CPU); a missing, corrupt or foreign file raises :class:`CheckpointError`."""
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle/zip/runtime errors here; re-raise naming the file
        raise CheckpointError(f"{path}: not a readable trainer state: {e}") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a diffprobe trainer state (format {STATE_FORMAT})")
    for key in ("step", "optimizer", "rng", "has_ema", "extra"):
        if key not in state:
            raise CheckpointError(f"{path}: missing entry {key!r}")
    return state


def _check_optimizer_fits(optimizer: torch.optim.Optimizer, path: Path) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != param.shape:
                    raise CheckpointError(f"{path}: optimizer state {key!r} has shape {tuple(value.shape)}, "
                                          f"parameter has {tuple(param.shape)}")


def load_checkpoint(
    ckpt_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    ema: EMA | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``, ``ema``); returns the trainer state dict.

    Every problem raises :class:`CheckpointError` naming the offending file: a missing or corrupt file, keys
    that the model lacks or does not expect, shapes that differ, an optimizer with other parameter groups,
    or an EMA present on one side only.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir}: no such checkpoint directory")
    state = read_trainer_state(ckpt_dir)
    state_path = ckpt_dir / STATE_FILE
    match = _STEP_DIR.match(ckpt_dir.name)
    if match and int(match.group(1)) != state["step"]:
        raise CheckpointError(f"{state_path}: holds step {state['step']}, but the directory is {ckpt_dir.name}")
    model_path = ckpt_dir / MODEL_FILE
    load_into_module(unwrap_model(model), read_tensors(model_path), model_path)
    ema_path = ckpt_dir / EMA_FILE
    if ema is not None:
        if not state["has_ema"]:
            raise CheckpointError(f"{state_path}: the checkpoint has no EMA, but an EMA was asked to be loaded")
        ema_tensors = read_tensors(ema_path)
        try:
            ema.load_state_dict(ema_tensors, source=str(ema_path))
        except ValueError as e:
            raise CheckpointError(str(e)) from e
    elif state["has_ema"]:
        raise CheckpointError(f"{ema_path}: the checkpoint has EMA weights but the run keeps no EMA "
                              f"(set ema_decay > 0 to resume it)")
    if optimizer is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{state_path}: optimizer state does not fit: {e}") from e
        _check_optimizer_fits(optimizer, state_path)
    return state


def load_model_weights(ckpt_dir: str | Path, model: nn.Module, ema: bool = True) -> nn.Module:
    """Load only the weights of a checkpoint into ``model`` (DDP-wrapped or not; the EMA weights by default)."""
    load_checkpoint_weights(ckpt_dir, unwrap_model(model), ema=ema)
    return model


def remove_checkpoints_after(run_dir: str | Path, step: int) -> list[Path]:
    """Delete every checkpoint later than ``step``; returns the removed paths."""
    removed = [path for s, path in list_checkpoints(run_dir) if s > step]
    for path in removed:
        _remove_dir(path)
    return removed


def checkpoints_to_keep(steps: Iterable[int], keep_last: int, keep_steps: Iterable[int] = (),
                        keep_every: int = 0) -> set[int]:
    """The steps a pruning policy keeps: the newest ``keep_last`` (all if 0), ``keep_steps``, multiples of
    ``keep_every``."""
    ordered = sorted(steps)
    keep = set(ordered if keep_last == 0 else ordered[-keep_last:])
    pinned = set(keep_steps)
    keep |= {s for s in ordered if s in pinned or (keep_every > 0 and s % keep_every == 0)}
    return keep


def prune_checkpoints(run_dir: str | Path, keep_last: int, keep_steps: Iterable[int] = (),
                      keep_every: int = 0) -> list[Path]:
    """Delete checkpoints the policy does not keep (never the one ``latest`` names); returns the removed paths."""
    listed = list_checkpoints(run_dir)
    keep = checkpoints_to_keep([s for s, _ in listed], keep_last, keep_steps, keep_every)
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        keep.add(latest[0])
    removed = []
    for step, path in listed:
        if step not in keep:
            _remove_dir(path)
            removed.append(path)
    return removed
