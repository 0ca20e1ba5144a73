"""The one interface every probed model implements."""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from diffprobe.errors import InputError

#: the noise levels every backbone takes: 0 (clean) to 1000 (pure noise), mapped by each kind to its own schedule
T_MAX = 1000.0


def clip_generator(noise_seed: int, clip_id: int, device: torch.device) -> torch.Generator:
    """The generator for one clip's feature noise: a pure function of (noise seed, clip id), so features do
    not depend on batch size or order."""
    g = torch.Generator(device=device)
    g.manual_seed((noise_seed * 1_000_003 + clip_id) % (2**63 - 1))
    return g


def clip_noise(z: torch.Tensor, clip_ids: torch.Tensor, noise_seed: int, draw: int) -> torch.Tensor:
    """Per-clip seeded Gaussian noise shaped like ``z`` (B, ...): clip i uses generator (noise_seed, id_i), draw k
    of an ensemble skips the first k draws, so draw 0 is the same whatever the ensemble size."""
    out = []
    for cid in clip_ids.tolist():
        g = clip_generator(noise_seed, int(cid), z.device)
        for _ in range(draw + 1):
            eps = torch.randn(z.shape[1:], generator=g, device=z.device, dtype=z.dtype)
        out.append(eps)
    return torch.stack(out)


def _checked(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (a subclass's ``features`` or ``features_from_encoded``: ``name``) preceded by
    :meth:`Backbone.check_request`; its arguments are read by the base method's signature, whatever names or
    ``*args`` the override uses."""

    @functools.wraps(method)
    def checked(self: Backbone, *args: Any, **kwargs: Any) -> Any:
        bound = _SIGNATURES[name].bind(self, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        self.check_request(a["blocks"], a["t"], a["noise_seed"], a["ensemble"])
        return method(self, *args, **kwargs)

    checked.__wrapped_by_check__ = True  # type: ignore[attr-defined]
    return checked


class Backbone(ABC):
    """A frozen model that turns clips into token grids at chosen blocks and noise levels.

    ``identity`` names the model and its weights (it keys the feature cache); ``num_blocks`` is the number of
    blocks that can be read (blocks are numbered 0..num_blocks, 0 = the input tokens). Every kind's ``features`` and
    ``features_from_encoded`` first run :meth:`check_request`, so a block the model lacks, a noise level outside
    0..1000, a negative noise seed or an ensemble below 1 is one :class:`~diffprobe.errors.InputError` for every
    kind (a subclass's methods are wrapped when the class is defined).
    """

    identity: str
    num_blocks: int
    device: torch.device
    #: a backbone whose block-0 output is this backbone's input (WALT: its tokenizer). When set, extraction caches
    #: the encoder's output once per split and feeds it to :meth:`features_from_encoded`, so the (costly) encoding
    #: is not repeated for every noise level and block.
    encoder: Backbone | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("features", "features_from_encoded"):
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "__wrapped_by_check__", False):
                setattr(cls, name, _checked(name, method))

    def check_request(self, blocks: Sequence[int], t: float = 0.0, noise_seed: int = 0, ensemble: int = 1) -> None:
        """An :class:`~diffprobe.errors.InputError` naming the problem if this backbone cannot serve ``blocks`` at
        noise level ``t`` (0..1000) with ``noise_seed`` (>= 0) and ``ensemble`` (>= 1) draws. Every kind's feature
        methods run it; a command that calls it right after loading the backbone refuses a mistake before any clip
        is read or encoded."""
        bad = [b for b in blocks if not 0 <= b <= self.num_blocks]
        if bad:
            raise InputError(f"block(s) {bad} out of range: {self.identity} has blocks 0..{self.num_blocks} (0: its "
                             "input tokens)")
        if not 0.0 <= t <= T_MAX:
            raise InputError(f"noise level t={t:g}: must be in 0..{T_MAX:g} (0: clean)")
        if noise_seed < 0:
            raise InputError(f"noise seed {noise_seed}: must be >= 0")
        if ensemble < 1:
            raise InputError(f"ensemble {ensemble}: must be >= 1 (noise draws averaged)")

    def identity_at(self, frames: int, height: int, width: int) -> str:
        """The identity of this backbone's features of clips of ``frames`` frames of ``height`` x ``width`` pixels:
        ``identity``, plus what the input's size changes in the computation (a video VAE's tiling, applied above a
        size). A feature cache key names clips of a known size by this."""
        return self.identity

    def features_from_encoded(self, encoded: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                              noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        """As :meth:`features`, from the ``encoder``'s block-0 output instead of pixels."""
        raise TypeError(f"{type(self).__name__} has no encoder; call features() with pixels")

    @abstractmethod
    def features(self, video: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                 noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        """Features of ``video`` uint8 (B, T, H, W, 3) at each block: ``{block: (B, T_f, H_f, W_f, C)}``.

        The input is noised to level ``t`` (0 = clean, up to 1000) with noise drawn from
        :func:`clip_generator` (noise_seed, clip id); ``ensemble`` > 1 averages features over that many noise
        draws (as DIFT does).
        """


#: the signatures every override is called by (the base class's own methods)
_SIGNATURES = {name: inspect.signature(getattr(Backbone, name)) for name in ("features", "features_from_encoded")}
