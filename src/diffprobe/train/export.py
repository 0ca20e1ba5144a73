"""The exported model of a finished run: ``model.safetensors`` (final, EMA where kept) + ``model.json``.

Checkpoints under ``ckpt/`` are for resuming; the export is what later stages load.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from diffprobe.config import Config
from diffprobe.models.exports import META_FILE, MODEL_FILE, load_export, read_export
from diffprobe.utils.distributed import DistContext, wait_for_all
from diffprobe.utils.io import atomic_write_json, save_tensors, tensors_sha256
from diffprobe.utils.lock import folder_lock

__all__ = ["META_FILE", "MODEL_FILE", "export_model", "finished_export", "load_export", "read_export", "train_once"]


def finished_export(run_dir: str | Path, cfg: Config, kind: str) -> Path | None:
    """The export of a run in ``run_dir`` that already finished with exactly ``cfg``, else ``None`` (a finished run
    asked again returns at once and rewrites nothing)."""
    run_dir = Path(run_dir)
    if not (run_dir / META_FILE).is_file() or not (run_dir / MODEL_FILE).is_file():
        return None
    meta = read_export(run_dir, kind)
    return run_dir / MODEL_FILE if meta["config"] == cfg.to_dict() else None


def train_once(run_dir: str | Path, cfg: Config, kind: str, train: Callable[[], Path]) -> Path:
    """The export of a run in ``run_dir`` that finished with exactly ``cfg`` (nothing rewritten), else ``train()``
    under the folder's lock (one writer per run folder, see ``utils.lock``)."""
    done = finished_export(run_dir, cfg, kind)
    if done is not None:
        return done
    with folder_lock(run_dir):
        return train()


def export_model(run_dir: str | Path, model: nn.Module, cfg: Config, kind: str, step: int,
                 extra: dict[str, Any] | None = None, ctx: DistContext | None = None) -> Path:
    """Write ``model``'s weights and a description (run config, kind, step, extras, weights hash); returns the file.
    Under torchrun (a distributed ``ctx``) rank 0 alone writes, and every rank returns once it has."""
    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    if ctx is None or ctx.is_main:
        state = model.state_dict()
        save_tensors(path, state, metadata={"kind": kind, "step": str(step)})
        atomic_write_json(run_dir / META_FILE, {"kind": kind, "step": step, "config": cfg.to_dict(),
                                                "sha256": tensors_sha256(state), **(extra or {})})
    if ctx is not None:
        wait_for_all(ctx)
    return path
