"""The exported model of a finished run: ``model.safetensors`` (final, EMA where kept) + ``model.json``.

Checkpoints under ``ckpt/`` are for resuming; the export is what later stages load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from diffprobe.config import Config
from diffprobe.train.checkpoint import load_into_module
from diffprobe.utils.io import atomic_write_json, file_sha256, load_tensors, read_json, save_tensors

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"


def export_model(run_dir: str | Path, model: nn.Module, cfg: Config, kind: str, step: int,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and a description (run config, kind, step, extras, weights hash); returns the file."""
    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    save_tensors(path, model.state_dict(), metadata={"kind": kind, "step": str(step)})
    atomic_write_json(run_dir / META_FILE, {"kind": kind, "step": step, "config": cfg.to_dict(),
                                            "sha256": file_sha256(path), **(extra or {})})
    return path


def read_export(run_dir: str | Path, kind: str) -> dict[str, Any]:
    """The description of a run's exported model; a missing export or the wrong kind is an error naming the file."""
    meta_path = Path(run_dir) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no exported model (has the run finished?)")
    meta = read_json(meta_path)
    if meta["kind"] != kind:
        raise ValueError(f"{meta_path}: holds a {meta['kind']!r} model, expected a {kind!r} model")
    return meta


def load_export(run_dir: str | Path, model: nn.Module) -> nn.Module:
    """Load exported weights into ``model`` strictly; mismatches raise an error naming the file and the keys."""
    path = Path(run_dir) / MODEL_FILE
    load_into_module(model, load_tensors(path), path)
    return model
