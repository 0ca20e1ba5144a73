"""AdamW with weight decay on matrices only, and the warm-up + cosine learning-rate schedule.

The schedule is a pure function of the step, so a resumed run needs no scheduler state: the loop sets
each parameter group's ``lr`` from :func:`lr_at` before every optimizer step.

A model declares extra parameters that must not decay (position embeddings, learned queries, ...) with a
method ``no_weight_decay(self) -> Iterable[str]`` returning parameter-name patterns (``fnmatch`` globs such
as ``"pos_embed"`` or ``"*.query_tokens"``), matched against the names of ``model.named_parameters()``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from diffprobe.train.config import TrainConfig
from diffprobe.utils.distributed import unwrap_model


def declared_no_decay(model: nn.Module) -> tuple[str, ...]:
    """The model's declared no-decay name patterns (``model.no_weight_decay()``), or ``()`` if it declares none."""
    method = getattr(model, "no_weight_decay", None)
    if method is None:
        return ()
    patterns = method()
    if isinstance(patterns, str) or not isinstance(patterns, Iterable):
        raise TypeError(f"{type(model).__name__}.no_weight_decay() must return an iterable of name patterns, "
                        f"got {patterns!r}")
    return tuple(patterns)


def no_decay_names(model: nn.Module, extra_patterns: Iterable[str] = ()) -> set[str]:
    """Names of trainable parameters that get no weight decay.

    These are: every parameter with ``ndim < 2`` (biases, norm scales and shifts), every parameter of an
    ``nn.Embedding``, and every name matching the model's declared patterns or ``extra_patterns``.
    """
    model = unwrap_model(model)
    patterns = declared_no_decay(model) + tuple(extra_patterns)
    embedding_params = {
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, mod in model.named_modules() if isinstance(mod, nn.Embedding)
        for p_name, _ in mod.named_parameters(recurse=False)
    }
    names = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or name in embedding_params or any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            names.add(name)
    return names


def param_groups(model: nn.Module, weight_decay: float, extra_no_decay: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Two AdamW parameter groups: ``decay`` (weight_decay) and ``no_decay`` (0); frozen parameters are left out."""
    model = unwrap_model(model)
    skip = no_decay_names(model, extra_no_decay)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name in skip else decay).append(param)
    if not decay and not no_decay:
        raise ValueError(f"{type(model).__name__}: no trainable parameters")
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


#: parameter-group keys that choose AdamW's implementation rather than its maths (kept from the optimizer on load)
IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the config's betas, eps and weight decay.

    When every trainable parameter is on CUDA it is the fused kernel (``fused=True``: one launch per step); anywhere
    else torch's default implementation. The implementation follows the device the run trains on, not the one a
    checkpoint was written on: loading a state dict keeps this optimizer's implementation keys.
    """
    groups = param_groups(model, cfg.weight_decay)
    on_cuda = all(p.device.type == "cuda" for g in groups for p in g["params"])
    kwargs = {"fused": True} if on_cuda else {}
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kwargs)
    optimizer.register_load_state_dict_pre_hook(_keep_implementation)
    return optimizer


def _keep_implementation(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Load-state pre-hook: the saved groups take this optimizer's implementation keys (a checkpoint written by a
    fused CUDA run resumes on the CPU with the CPU implementation, and the other way round)."""
    if len(state_dict["param_groups"]) != len(optimizer.param_groups):
        return state_dict  # torch's own check names the mismatch
    groups = [{**saved, **{k: group[k] for k in IMPLEMENTATION_KEYS if k in group}}
              for saved, group in zip(state_dict["param_groups"], optimizer.param_groups, strict=True)]
    return {**state_dict, "param_groups": groups}


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine decay.

    Warm-up: ``base_lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``.
    Decay: with ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1],
    ``base_lr * (min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * p)) / 2)``.
    """
    if step < 0:
        raise ValueError(f"lr_at: step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return base_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def config_lr_at(step: int, cfg: TrainConfig) -> float:
    """:func:`lr_at` with the schedule of ``cfg``."""
    return lr_at(step, base_lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                 min_lr_ratio=cfg.min_lr_ratio)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
