"""A probe: one task's query encoder feeding the shared cross-attention readout."""

from __future__ import annotations

from torch import Tensor, nn

from diffprobe.readouts.config import ReadoutConfig
from diffprobe.readouts.readout import AttentionReadout


class Probe(nn.Module):
    """A task's query encoder feeding the shared readout; the head size is the encoder's ``out_dim``.

    An optional ``baseline`` ``(Q or 1, out_dim)`` (the task's no-information prior as head output, see
    :meth:`~diffprobe.tasks.base.Task.baseline`) is added to the readout's zero-initialised head, so the probe starts
    at the prior and learns only what the features add to it."""

    def __init__(
        self, cfg: ReadoutConfig, queries: nn.Module, feature_dim: int, feature_grid: tuple[int, int, int]
    ) -> None:
        super().__init__()
        self.queries = queries
        self.readout = AttentionReadout(cfg, feature_dim, feature_grid, out_dim=queries.out_dim)
        self.register_buffer("baseline", None)

    def set_baseline(self, baseline: Tensor | None) -> Probe:
        """Add ``baseline`` ``(Q or 1, out_dim)`` to every output from now on (``None`` removes it); returns self."""
        if baseline is not None and (baseline.dim() != 2 or baseline.shape[-1] != self.queries.out_dim):
            raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not fit a head of "
                             f"{self.queries.out_dim} outputs per query; expected (Q or 1, {self.queries.out_dim})")
        self.baseline = None if baseline is None else baseline.detach().clone().float()
        return self

    def forward(self, features: Tensor, *query_inputs: Tensor) -> Tensor:
        """``features (B, T_f, H_f, W_f, C)`` and the encoder's inputs (none for learned, patch and frame queries;
        points; box and its frame) -> ``(B, Q, out_dim)``. Encoders with ``reads_features`` also get the embedded
        token grid, to sample what they are asked to follow."""
        tokens = self.readout.embed(features)  # (B, T_f, H_f, W_f, D)
        if getattr(self.queries, "reads_features", False):
            queries = self.queries(tokens, *query_inputs)
        else:
            queries = self.queries(*query_inputs) if query_inputs else self.queries(features.shape[0])
        out = self.readout.attend(tokens, queries)  # (B, Q, out_dim)
        return out if self.baseline is None else out + self.baseline.to(out.dtype)
