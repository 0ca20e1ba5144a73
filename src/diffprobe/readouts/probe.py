"""A probe (one query encoder + one readout) and a bank of probes trained at several learning rates at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
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


class ProbeBank(nn.Module):
    """Several independent probes, one per learning rate, trained on the same batches of frozen features.

    One AdamW optimiser holds one parameter group per probe; the losses are summed before ``backward``, and since
    the probes share no parameters each one receives exactly the gradient of its own loss.
    """

    def __init__(
        self, make_probe: Callable[[], Probe], learning_rates: Sequence[float], weight_decay: float
    ) -> None:
        super().__init__()
        if not learning_rates:
            raise ValueError("ProbeBank needs at least one learning rate")
        self.learning_rates = tuple(float(lr) for lr in learning_rates)
        self.probes = nn.ModuleList(make_probe() for _ in self.learning_rates)
        groups = [
            {"params": list(p.parameters()), "lr": lr, "base_lr": lr}
            for p, lr in zip(self.probes, self.learning_rates, strict=True)
        ]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay, foreach=True)

    @classmethod
    def from_config(cls, cfg: ReadoutConfig, make_probe: Callable[[], Probe]) -> ProbeBank:
        """A bank over ``cfg.learning_rates`` with ``cfg.weight_decay``."""
        return cls(make_probe, cfg.learning_rates, cfg.weight_decay)

    def __len__(self) -> int:
        return len(self.probes)

    def forward(self, features: Tensor, *query_inputs: Tensor) -> list[Tensor]:
        """Every probe's output on the same batch, in learning-rate order."""
        return [probe(features, *query_inputs) for probe in self.probes]

    def step(self, loss_fn: Callable[[Tensor], Tensor], features: Tensor, *query_inputs: Tensor,
             grad_clip: float = 0.0) -> Tensor:
        """One optimisation step of every probe on one batch; ``loss_fn`` maps a probe's output to its scalar loss.
        ``grad_clip`` > 0 clips each probe's gradient norm separately. Returns each probe's loss before the step,
        ``(P,)``, detached and on the probes' device (reading it is the caller's choice: no host sync here)."""
        self.train()
        losses = torch.stack([loss_fn(out) for out in self(features, *query_inputs)])  # (P,)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        if grad_clip > 0:
            for probe in self.probes:
                torch.nn.utils.clip_grad_norm_(probe.parameters(), grad_clip, foreach=True)
        self.optimizer.step()
        return losses.detach()

    def set_lr_scale(self, scale: float) -> None:
        """Set every group's learning rate to ``scale`` times its base rate (for warm-up / cosine schedules)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale

    def best(self, scores: Sequence[float], higher_is_better: bool = True) -> tuple[int, Probe]:
        """The index and probe with the best validation score (one score per probe, in learning-rate order)."""
        if len(scores) != len(self.probes):
            raise ValueError(f"got {len(scores)} scores for {len(self.probes)} probes")
        pick = max if higher_is_better else min
        index = pick(range(len(scores)), key=lambda i: scores[i])
        return index, self.probes[index]
