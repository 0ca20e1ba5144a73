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

from diffprobe.errors import DiffprobeError, FileProblem, InputError, MissingFile
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


def resolve_recorded_path(run_dir: str | Path, recorded: str | Path, what: str) -> Path:
    """A path a run recorded (see ``train.rundir.record_path``): absolute as it is; relative, looked up beside the run
    folder (a study stores ``../../tokenizer``), or for runs made before paths were recorded that way, relative to the
    working directory. Missing in both places: an error naming the run, what it expected and where it looked."""
    path = Path(recorded)
    if path.is_absolute():
        if not path.exists():
            raise MissingFile(f"{run_dir}: its {what} {path} does not exist (moved or deleted?)")
        return path
    beside = Path(os.path.normpath(Path(run_dir) / path))  # lexical: the run's own directory may not exist yet
    if beside.exists():
        return beside
    if path.exists():  # a run recorded before paths were stored relative to the run folder
        return path
    raise MissingFile(f"{run_dir}: its {what} {str(recorded)!r} is not at {beside} (paths a run records are relative "
                      f"to the run folder); put it back there, or train the run again")


def resolve_tokenizer_dir(run_dir: str | Path, tokenizer: str | Path) -> Path:
    """The tokenizer run of the twin in ``run_dir`` (see :func:`resolve_recorded_path`)."""
    return resolve_recorded_path(run_dir, tokenizer, "tokenizer run")


def resolve_recorded_spec(run_dir: str | Path, spec: str) -> str:
    """A dataset spec a run recorded, with its file or folder path resolved as :func:`resolve_recorded_path` does
    (absolute paths and preset kinds such as ``probeworld:tiny`` are returned as they are)."""
    from diffprobe.data.registry import map_spec_path

    return map_spec_path(spec, lambda path: str(resolve_recorded_path(run_dir, path, f"dataset {spec!r}")))


def export_clip_size(run_dir: str | Path) -> tuple[int, int, int]:
    """The clip size ``(frames, height, width)`` a finished run was trained on: recorded in its export, or for runs
    exported before that was recorded, the size of its recorded dataset (every run config names one)."""
    from diffprobe.data.registry import open_dataset

    meta = read_json(Path(run_dir) / META_FILE)
    if "clip_size" in meta:
        return tuple(meta["clip_size"])
    ds = open_dataset(resolve_recorded_spec(run_dir, meta["config"]["dataset"]))
    return ds.frames, ds.height, ds.width


def check_clip_size(trained: tuple[int, int, int] | None, ds: Any, what: str, allow: bool) -> None:
    """A dataset ``ds`` (with ``height`` and ``width``) whose frames differ in size from those ``what`` was trained on
    (``trained``: frames, height, width) is an error naming both sizes, unless ``allow`` (``--allow-size-change``):
    never a silent resize. The frame count may differ (images are 1-frame clips; the tokenizer checks what it
    takes)."""
    if trained is None or allow:
        return
    _, h, w = trained
    if (ds.height, ds.width) != (h, w):
        raise InputError(f"dataset {ds.spec!r}: frames of {ds.height}x{ds.width} px, but {what} was trained on "
                         f"{h}x{w} px; pass --allow-size-change to use them anyway, or give the dataset the trained "
                         f"size (its size or height/width option)")


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
                   ema=cfg["train"]["ema_decay"] > 0, dataset=resolve_recorded_spec(run_dir, cfg["dataset"]),
                   step=int(meta["step"]),
                   sha256=meta["sha256"])


def run_kind(run_dir: str | Path) -> str:
    """The kind of model a finished run exported (``tokenizer``, ``denoiser``, ``feature-net``)."""
    meta_path = Path(run_dir) / META_FILE
    if not meta_path.is_file():
        raise MissingFile(f"{meta_path}: no exported model (has the run finished?)")
    return read_json(meta_path)["kind"]
