"""The one interface every probed model implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch


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


class Backbone(ABC):
    """A frozen model that turns clips into token grids at chosen blocks and noise levels.

    ``identity`` names the model and its weights (it keys the feature cache); ``num_blocks`` is the number of
    blocks that can be read (blocks are numbered 0..num_blocks, 0 = the input tokens).
    """

    identity: str
    num_blocks: int
    device: torch.device
    #: a backbone whose block-0 output is this backbone's input (WALT: its tokenizer). When set, extraction caches
    #: the encoder's output once per split and feeds it to :meth:`features_from_encoded`, so the (costly) encoding
    #: is not repeated for every noise level and block.
    encoder: Backbone | None = None

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
