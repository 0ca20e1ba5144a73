"""Backbones by name: ``KIND:PATH`` specs that the CLI and the study resolve to a :class:`Backbone`.

| spec | backbone |
| ``walt:RUN`` | a trained WALT twin (its run's mode: image or video), exported EMA weights |
| ``walt@STEP:RUN`` | the same twin at training checkpoint STEP (EMA weights), for training-budget sweeps |
| ``walt-untrained:RUN`` | the same architecture and tokenizer as RUN, randomly initialised (seed 0) |
| ``latents:RUN`` | the tokenizer latents themselves (RUN: a tokenizer run or a twin run), video mode |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from diffprobe.backbones.base import Backbone
from diffprobe.backbones.walt import LatentBackbone, WALTBackbone
from diffprobe.data import ProbeWorldConfig
from diffprobe.models import WALT
from diffprobe.train.checkpoint import checkpoint_dir, load_model_weights
from diffprobe.train.denoiser import DenoiserRunConfig, latents_identity, load_denoiser, load_tokenizer
from diffprobe.train.export import META_FILE, read_export
from diffprobe.utils.io import read_json


@dataclass(frozen=True)
class ResolvedBackbone:
    backbone: Backbone
    world: ProbeWorldConfig  #: the world the backbone's models were trained on (its default dataset)
    mode: str  #: "video" or "image" (how the backbone sees a clip)
    step: int  #: training step of the weights (0 for untrained / not applicable)


def _tokenizer_run(run: Path) -> Path:
    """A twin run's tokenizer run, or ``run`` itself when it is a tokenizer run."""
    meta_path = run / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no exported model (has the run finished?)")
    kind = read_json(meta_path)["kind"]
    if kind == "tokenizer":
        return run
    return DenoiserRunConfig.from_dict(read_export(run, "denoiser")["config"]).tokenizer_dir(run)


def load_backbone(spec: str, device: torch.device) -> ResolvedBackbone:
    """Resolve a ``KIND:PATH`` spec (see the module docstring); errors name the spec and the problem."""
    if ":" not in spec:
        raise ValueError(f"backbone spec {spec!r}: expected KIND:PATH, e.g. walt:runs/video")
    kind, path = spec.split(":", 1)
    run = Path(path)
    base, _, step_text = kind.partition("@")
    if base == "latents":
        tok_run = _tokenizer_run(run)
        tokenizer, meta = load_tokenizer(tok_run)
        world = ProbeWorldConfig.from_dict(meta["config"]["world"])
        return ResolvedBackbone(LatentBackbone(tokenizer, latents_identity(meta["sha256"], "video"), device), world,
                                "video", 0)
    if base not in ("walt", "walt-untrained"):
        raise ValueError(f"backbone spec {spec!r}: unknown kind {base!r}; known: walt, walt@STEP, walt-untrained, "
                         f"latents")
    denoiser, cfg, meta = load_denoiser(run)
    tokenizer, tok_meta = load_tokenizer(cfg.tokenizer_dir(run))
    step = meta["step"]
    if base == "walt-untrained":
        torch.manual_seed(0)
        denoiser, step = WALT(cfg.model).eval(), 0
        identity = f"walt-untrained-{cfg.model.hash()}-{tok_meta['sha256'][:12]}"
    elif step_text:
        step = int(step_text)
        ckpt = checkpoint_dir(run, step)
        if not ckpt.is_dir():
            raise FileNotFoundError(f"{ckpt}: no checkpoint at step {step} in {run} (see {run / 'ckpt'})")
        denoiser = load_model_weights(ckpt, WALT(cfg.model), ema=cfg.train.ema_decay > 0).eval()
        identity = f"walt-{cfg.mode}-{meta['sha256'][:12]}-step{step}"
    else:
        identity = f"walt-{cfg.mode}-{meta['sha256'][:12]}"
    backbone = WALTBackbone(tokenizer, denoiser, cfg.mode, identity, device,
                            encoder_identity=latents_identity(tok_meta["sha256"], cfg.mode))
    return ResolvedBackbone(backbone, cfg.world, cfg.mode, step)
