"""Reading finished runs: exported weights (``model.safetensors`` + ``model.json``) and checkpoint weights.

This is the one place that knows the on-disk layout of a run directory for *loading* it, so the stages that load
our models (``backbones``, ``train`` for resuming and sampling) import it from here, below both of them::

    RUN/model.safetensors   final weights (EMA where kept)         RUN/model.json   kind, step, config, sha256, ...
    RUN/ckpt/step-XXXXXXXX/{model,ema}.safetensors                 training checkpoints (see train.checkpoint)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffprobe.errors import DiffprobeError, FileProblem, MissingFile
from diffprobe.models.autoencoder import CausalAutoencoder, CausalAutoencoderConfig
from diffprobe.models.walt import WALT, WALTConfig
from diffprobe.utils.io import load_tensors, read_json

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
CKPT_SUBDIR = "ckpt"
CKPT_MODEL_FILE = "model.safetensors"
CKPT_EMA_FILE = "ema.safetensors"


class CheckpointError(DiffprobeError, ValueError):
    """A checkpoint or export file is missing, unreadable, or does not fit the model it is loaded into."""


def load_into_module(module: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Strict load; missing/unexpected keys and shape mismatches raise :class:`CheckpointError` naming ``path``."""
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not fit {type(module).__name__}: missing keys {missing}, "
                              f"unexpected keys {unexpected}")
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in tensors.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise CheckpointError(f"{path}: shape mismatch for {type(module).__name__}: " + "; ".join(wrong))
    with torch.no_grad():
        module.load_state_dict(tensors, strict=True)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a missing or corrupt file is a :class:`CheckpointError` naming it."""
    try:
        return load_tensors(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives (``run_dir/ckpt/step-{step:08d}``)."""
    return Path(run_dir) / CKPT_SUBDIR / f"step-{step:08d}"


def load_checkpoint_weights(ckpt_dir: str | Path, model: nn.Module, ema: bool = True) -> nn.Module:
    """Load only the weights of a checkpoint into ``model`` (the EMA weights by default); returns ``model``.

    With ``ema=True`` a checkpoint without ``ema.safetensors`` is an error (pass ``ema=False`` for such runs).
    """
    path = Path(ckpt_dir) / (CKPT_EMA_FILE if ema else CKPT_MODEL_FILE)
    if not path.is_file():
        hint = " (this run kept no EMA; pass ema=False)" if ema and (Path(ckpt_dir) / CKPT_MODEL_FILE).is_file() else ""
        raise CheckpointError(f"{path}: no such file{hint}")
    load_into_module(model, read_tensors(path), path)
    return model


def read_export(run_dir: str | Path, kind: str) -> dict[str, Any]:
    """The description of a run's exported model; a missing export or the wrong kind is an error naming the file."""
    meta_path = Path(run_dir) / META_FILE
    if not meta_path.is_file():
        raise MissingFile(f"{meta_path}: no exported model (has the run finished?)")
    meta = read_json(meta_path)
    if meta["kind"] != kind:
        raise FileProblem(f"{meta_path}: holds a {meta['kind']!r} model, expected a {kind!r} model")
    return meta


def load_export(run_dir: str | Path, model: nn.Module) -> nn.Module:
    """Load exported weights into ``model`` strictly; mismatches raise an error naming the file and the keys."""
    path = Path(run_dir) / MODEL_FILE
    load_into_module(model, read_tensors(path), path)
    return model


def load_tokenizer(run_dir: str | Path) -> tuple[CausalAutoencoder, dict[str, Any]]:
    """The exported tokenizer of a finished tokenizer run, and its description."""
    meta = read_export(run_dir, "tokenizer")
    model = CausalAutoencoder(CausalAutoencoderConfig.from_dict(meta["config"]["model"]))
    return load_export(run_dir, model).eval(), meta


def resolve_tokenizer_dir(run_dir: str | Path, tokenizer: str | Path) -> Path:
    """The tokenizer run of the twin in ``run_dir``. A relative path is looked up relative to the twin's run
    directory first (a study stores ``../../tokenizer``, so its runs work from any directory and can be moved), then
    relative to the working directory (``diffprobe train --tokenizer runs/tok``)."""
    path = Path(tokenizer)
    beside = Path(os.path.normpath(Path(run_dir) / path))  # lexical: the twin's own directory may not exist yet
    return beside if not path.is_absolute() and beside.is_dir() else path


def latents_identity(tokenizer_sha: str, mode: str) -> str:
    """Backbone identity of a tokenizer's latents as the ``mode`` twin sees them (the WALT backbones' encoder)."""
    return f"latents-{mode}-{tokenizer_sha[:12]}"


@dataclasses.dataclass(frozen=True)
class WALTRun:
    """What loading a finished WALT twin run needs, read from its ``model.json``."""

    run_dir: Path
    mode: str  #: "video" or "image"
    model: WALTConfig
    tokenizer_dir: Path
    ema: bool  #: whether its checkpoints keep EMA weights
    dataset: str  #: spec of the data it was trained on
    step: int
    sha256: str

    def denoiser(self) -> WALT:
        """The exported (EMA) denoiser."""
        return load_export(self.run_dir, WALT(self.model)).eval()

    def checkpoint(self, step: int) -> WALT:
        """The (EMA) denoiser of training checkpoint ``step``; a missing checkpoint is an error naming it."""
        ckpt = checkpoint_dir(self.run_dir, step)
        if not ckpt.is_dir():
            raise MissingFile(f"{ckpt}: no checkpoint at step {step} in {self.run_dir} "
                                    f"(see {self.run_dir / CKPT_SUBDIR})")
        return load_checkpoint_weights(ckpt, WALT(self.model), ema=self.ema).eval()


def read_walt_run(run_dir: str | Path) -> WALTRun:
    """The description of a finished twin run (see :class:`WALTRun`)."""
    run_dir = Path(run_dir)
    meta = read_export(run_dir, "denoiser")
    cfg = meta["config"]
    return WALTRun(run_dir=run_dir, mode=cfg["mode"], model=WALTConfig.from_dict(cfg["model"]),
                   tokenizer_dir=resolve_tokenizer_dir(run_dir, cfg["tokenizer"]),
                   ema=cfg["train"]["ema_decay"] > 0, dataset=cfg["dataset"], step=int(meta["step"]),
                   sha256=meta["sha256"])


def run_kind(run_dir: str | Path) -> str:
    """The kind of model a finished run exported (``tokenizer``, ``denoiser``, ``feature-net``)."""
    meta_path = Path(run_dir) / META_FILE
    if not meta_path.is_file():
        raise MissingFile(f"{meta_path}: no exported model (has the run finished?)")
    return read_json(meta_path)["kind"]
