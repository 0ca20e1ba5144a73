"""The FLOPs of a backbone's forward without computing it: one clip's forward on fake tensors (as
:mod:`~diffprobe.backbones.shapes` runs it) under ``torch.utils.flop_counter``, which counts every matmul,
convolution and attention from shapes alone."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffprobe.backbones.base import Backbone
from diffprobe.backbones.shapes import _grey, _LiveBytes
from diffprobe.errors import DiffprobeError


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
