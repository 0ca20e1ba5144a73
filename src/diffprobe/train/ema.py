"""Exponential moving average of a model's weights.

The shadow holds one tensor per entry of the model's ``state_dict``: floating-point parameters are averaged
(in fp32), everything else (buffers such as norm statistics, integer counters) is copied. It is therefore a
complete state dict that loads into the model as is, and is saved with checkpoints as ``ema.safetensors``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from diffprobe.utils.distributed import unwrap_model


class EMA:
    """EMA of ``model``'s weights: ``shadow = decay * shadow + (1 - decay) * weight`` after each step.

    Until step ``start`` the shadow copies the weights, so the average does not remember the random init.
    """

    def __init__(self, model: nn.Module, decay: float, start: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.start = start
        model = unwrap_model(model)
        self._averaged = {name for name, p in model.named_parameters(remove_duplicate=False)
                          if p.is_floating_point()}
        self.shadow: dict[str, torch.Tensor] = {
            k: (v.detach().float().clone() if k in self._averaged else v.detach().clone())
            for k, v in model.state_dict().items()
        }

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the current weights in; ``step`` is the number of optimizer steps done so far."""
        state = unwrap_model(model).state_dict()
        self._check_keys(state.keys(), "model")
        copy = step <= self.start
        for name, value in state.items():
            target = self.shadow[name]
            if name in self._averaged and not copy:
                target.lerp_(value.detach().float(), 1.0 - self.decay)
            else:
                target.copy_(value.detach())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights with the EMA weights."""
        unwrap_model(model).load_state_dict(self.shadow, strict=True)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily swap the EMA weights into ``model`` (e.g. to evaluate); the trained weights come back after."""
        inner = unwrap_model(model)
        backup = {k: v.detach().clone() for k, v in inner.state_dict().items()}
        self.copy_to(inner)
        try:
            yield model
        finally:
            inner.load_state_dict(backup, strict=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights (name -> tensor), as saved in ``ema.safetensors``."""
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor], source: str = "EMA state") -> None:
        """Load shadow weights; missing/unexpected keys or shape mismatches raise ``ValueError`` naming ``source``."""
        self._check_keys(state.keys(), source)
        for name, value in state.items():
            if tuple(value.shape) != tuple(self.shadow[name].shape):
                raise ValueError(f"{source}: shape mismatch for {name!r}: "
                                 f"{tuple(value.shape)} vs model {tuple(self.shadow[name].shape)}")
            self.shadow[name].copy_(value)

    def to(self, device: torch.device) -> EMA:
        """Move the shadow to ``device`` (in place); returns self."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def _check_keys(self, names: Iterable[str], source: str) -> None:
        keys = set(names)
        missing, unexpected = sorted(set(self.shadow) - keys), sorted(keys - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"{source}: EMA key mismatch; missing {missing}, unexpected {unexpected}")
