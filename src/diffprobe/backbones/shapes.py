"""Block shapes and memory of a backbone's forward without computing it: the forward runs on fake tensors
(:class:`torch._subclasses.fake_tensor.FakeTensorMode`), whose every op yields only a shape and dtype, so a real-size
model at a native clip size answers in about a second with no FLOPs and no activation memory. The weights stay where
they are: each parameter is viewed as a fake tensor when an op first reads it (no copy).

A kind whose forward reads a value out of a tensor (data-dependent control flow) or uses an op without a fake
implementation cannot run fake; :func:`forward_shapes` then runs the real forward on a grey clip and says so once per
backbone type. :func:`forward_flops` counts the FLOPs of the same fake forward.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from diffprobe.backbones.base import Backbone
from diffprobe.errors import DiffprobeError

#: an op whose tensor inputs are all real and at most this many elements runs for real (a scheduler's table read
#: by ``float(alphas[tau])``, the clip ids sliced into sub-batches); anything touching a fake tensor stays fake
SMALL_REAL = 1 << 16
#: backbone types that could not run fake (said once each)
_FELL_BACK: set[str] = set()


@dataclass(frozen=True)
class ForwardShapes:
    """What one forward of ``batch`` grey clips at t = 0 gives."""

    shapes: dict[int, tuple[int, ...]]  #: ``{block: (T_f, H_f, W_f, C)}`` per clip
    fake: bool  #: True: computed on fake tensors (no real compute); False: a real forward (the kind cannot run fake)
    #: peak bytes of the tensors alive at once during the forward (weights excluded), when fake; None for a real one
    peak_activation_bytes: int | None
    #: the feature dtype of each block as the backbone returns it
    dtypes: dict[int, torch.dtype]


class _LiveBytes(FakeTensorMode):
    """A fake-tensor mode that tracks the bytes of the storages its ops create and their peak while alive.

    A storage is counted once, from its first tensor until the last tensor on it is collected; views share their
    base's storage, so they add nothing. Weights (converted, not created, by the mode) are not counted."""

    def __init__(self) -> None:
        super().__init__(allow_non_fake_inputs=True)
        self.live = self.peak = 0
        self._refs: dict[int, int] = {}  # storage key -> tensors alive on it

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's signature)
        tensors = [a for a in tree_leaves((args, kwargs or {})) if isinstance(a, torch.Tensor)]
        if tensors and all(not isinstance(a, FakeTensor) and a.numel() <= SMALL_REAL for a in tensors):
            return func(*args, **(kwargs or {}))  # a small real table (a schedule's alphas): read it for real
        out = super().__torch_dispatch__(func, types, args, kwargs)
        for t in tree_leaves(out):
            if isinstance(t, FakeTensor):
                self._track(t)
        return out

    def _track(self, t: FakeTensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self._refs:
            self._refs[key] = 0
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._refs[key] += 1
        weakref.finalize(t, self._release, key, storage.nbytes())

    def _release(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self.live -= nbytes


def _grey(batch: int, frames: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch, frames, height, width, 3), 128, dtype=torch.uint8, device=device)  # (B, T, H, W, 3)


def forward_shapes(backbone: Backbone, frames: int, height: int, width: int, batch: int = 1) -> ForwardShapes:
    """Every block's per-clip shape for ``batch`` grey clips of ``frames x height x width`` at t = 0, on fake
    tensors where the kind allows it, else by a real forward of one clip (said once per backbone type). A user's
    mistake (a size the model cannot take) is raised either way."""
    blocks = list(range(backbone.num_blocks + 1))
    mode = _LiveBytes()
    try:
        ids = torch.arange(batch)  # real: a kind's seeded noise reads the ids (slices of it stay real, SMALL_REAL)
        with mode, torch.no_grad():
            feats = backbone.features(_grey(batch, frames, height, width, backbone.device), ids, blocks, 0.0, 0)
            shapes = {b: tuple(feats[b].shape[1:]) for b in blocks}
            dtypes = {b: feats[b].dtype for b in blocks}
            del feats
        return ForwardShapes(shapes, True, mode.peak, dtypes)
    except DiffprobeError:
        raise
    except Exception as e:  # noqa: BLE001 (any op that cannot run fake: fall back to the real forward)
        name = type(backbone).__name__
        if name not in _FELL_BACK:
            _FELL_BACK.add(name)
            warnings.warn(f"{name} cannot run on fake tensors ({type(e).__name__}: {str(e)[:80]}); computing its "
                          "shapes by a real forward on a grey clip", stacklevel=2)
    with torch.no_grad():  # one clip: the shapes are per clip, and a real batch costs a batch of compute
        feats = backbone.features(_grey(1, frames, height, width, backbone.device), torch.arange(1), blocks, 0.0, 0)
    return ForwardShapes({b: tuple(feats[b].shape[1:]) for b in blocks}, False, None,
                         {b: feats[b].dtype for b in blocks})


def forward_flops(backbone: Backbone, frames: int, height: int, width: int, block: int, t: float = 0.0,
                  noise_seed: int = 0) -> float:
    """FLOPs of ``backbone``'s features of one ``frames x height x width`` clip up to ``block`` at noise level
    ``t`` (the encoder's too, where the kind encodes inside its forward); on fake tensors where the kind runs fake,
    else by a real forward of a grey clip."""
    def run(device_clip: torch.Tensor) -> None:
        backbone.features(device_clip, torch.arange(1), [block], t, noise_seed)

    counter = FlopCounterMode(display=False)
    try:
        with _LiveBytes(), counter:  # the counter above the fake mode: it sees every op, then the fake mode runs it
            run(_grey(1, frames, height, width, backbone.device))
        return float(counter.get_total_flops())
    except DiffprobeError:
        raise
    except Exception:  # noqa: BLE001 (an op that cannot run fake: count a real forward, as forward_shapes does)
        counter = FlopCounterMode(display=False)
        with counter:
            run(_grey(1, frames, height, width, backbone.device))
        return float(counter.get_total_flops())


def resident_bytes() -> int:
    """This process's resident memory now (``VmRSS`` of /proc/self/status; elsewhere its peak so far, from
    ``getrusage``)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


#: the libraries a model-folder kind imports when it loads, imported before the baseline is read
LIBRARIES = ("diffusers", "transformers", "diffprobe.features.extract")


def import_libraries() -> None:
    """Import what an extraction imports besides the model (:data:`LIBRARIES`, those installed), so that
    :func:`resident_bytes` then reads the baseline an extraction's process has before it loads the weights."""
    import importlib

    for name in LIBRARIES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _held(obj: object) -> list[object]:
    """What ``obj`` holds that may hold modules: a backbone's attributes (its encoder, whose ``vae`` is the VAE it
    runs)."""
    return list(vars(obj).values()) if isinstance(obj, Backbone) else []


def modules(backbone: Backbone) -> list[torch.nn.Module]:
    """The top-level modules the backbone holds: its attributes' and its encoder's (the VAE), each once."""
    found: dict[int, torch.nn.Module] = {}
    todo: list[object] = [backbone]
    visited: set[int] = set()
    while todo:
        obj = todo.pop()
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found[id(obj)] = obj
        else:
            todo += _held(obj)
    return list(found.values())


def parameters(backbone: Backbone) -> list[torch.nn.Parameter]:
    """The unique parameters of every module the backbone (and its encoder) holds as an attribute."""
    seen: dict[int, torch.nn.Parameter] = {}
    for module in modules(backbone):
        seen.update((id(p), p) for p in module.parameters())
    return list(seen.values())


@dataclass(frozen=True)
class Estimate:
    """Memory and disk of a backbone at one clip size, before any work (:func:`estimate`)."""

    forward: ForwardShapes  #: the per-clip block shapes (and the peak, when fake) for ``batch`` clips
    batch: int  #: clips in the forward whose activations are counted
    parameters: int  #: parameter count
    weight_bytes: int  #: parameters x their loaded dtype's size (the spec's ``dtype`` where the kind has one)
    weight_dtypes: tuple[str, ...]  #: the dtypes the weights are held in
    feature_bytes: dict[int, int]  #: block -> bytes of one clip's features at one (block, t) in the cache's dtype
    clips: int | None  #: clips of a planned extraction, when asked
    baseline: int = 0  #: resident bytes of the process before the model loads (:func:`resident_bytes`)

    @property
    def activation_bytes(self) -> int:
        """The forward's peak when it ran fake; else the blocks' outputs for the batch at their dtype (a lower
        bound: intermediate tensors are not counted)."""
        if self.forward.peak_activation_bytes is not None:
            return self.forward.peak_activation_bytes
        return self.batch * sum(math.prod(s) * self.forward.dtypes[b].itemsize for b, s in self.forward.shapes.items())

    @property
    def peak_bytes(self) -> int:
        """The process's peak resident memory in one forward: its ``baseline`` (imports, before the load), every
        weight at its loaded dtype (the VAE and any image encoder included, fp32 modules a library keeps in fp32
        at their size) and the forward's activation peak. The libraries load safetensors weights without a second
        copy, so the load itself peaks below this."""
        return self.baseline + self.weight_bytes + self.activation_bytes

    def cache_bytes(self, block: int) -> int | None:
        """Bytes of ``clips`` clips' features at one (block, t); None when no clip count was given."""
        return None if self.clips is None else self.clips * self.feature_bytes[block]


def estimate(backbone: Backbone, frames: int, height: int, width: int, batch: int, feature_dtype: torch.dtype,
             clips: int | None = None, cached: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None,
             baseline: int = 0) -> Estimate:
    """Weights, one forward's activations for ``batch`` clips, and feature (cache) bytes per clip per (block, t) at
    ``feature_dtype``, for clips of ``frames x height x width``; nothing is computed where the kind runs fake.
    ``cached`` maps a block's shape to the shape the cache holds (token pooling); None: the block's own.
    ``baseline``: the process's resident bytes before the load (:func:`resident_bytes` after
    :func:`import_libraries`), counted in :attr:`Estimate.peak_bytes`."""
    forward = forward_shapes(backbone, frames, height, width, batch)
    params = parameters(backbone)
    dtypes = tuple(sorted({str(p.dtype).removeprefix("torch.") for p in params}))
    features = {b: math.prod(cached(s) if cached else s) * feature_dtype.itemsize for b, s in forward.shapes.items()}
    weights = sum(p.numel() * p.element_size() for p in params)
    return Estimate(forward, batch, sum(p.numel() for p in params), weights, dtypes, features, clips, baseline)
