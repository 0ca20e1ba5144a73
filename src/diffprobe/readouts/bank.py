"""A bank of P probes of one architecture, trained as one vectorised model.

The probes' parameters live in one flat ``(P, N)`` tensor. Every call views each probe's row as its named parameters
and runs all P probes in one :func:`torch.func.vmap` of :func:`torch.func.functional_call`: one batched forward, one
backward and one optimiser update for the bank instead of P of each (V-JEPA 2 trains its grid of attentive probes
side by side; here they are also one model). Each probe keeps what makes it a probe of its own:

- its initialisation, from its own seed (a probe built alone from that seed has the same weights);
- its batches (each probe is given its own features and targets, ``(P, B, ...)``: its sample of clips and queries);
- its learning rate, decoupled weight decay and gradient-norm clip (AdamW over the flat tensor, per-row rates);
- its loss: the task's loss is computed per probe inside the vmap, so no probe's gradient depends on another's.

Nothing a probe computes depends on which other probes share its bank, up to float summation order (dropout aside:
its draws are vmapped with ``randomness="different"``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from diffprobe.readouts.probe import Probe

Targets = dict[str, Tensor]


@dataclass(frozen=True)
class Member:
    """One probe of a bank: its initialisation seed and its optimiser settings."""

    seed: int
    lr: float
    weight_decay: float
    grad_clip: float = 0.0  #: gradient-norm clip of this probe alone; 0 disables


class ProbeBank(nn.Module):
    """P probes made by ``make_probe`` (each under its member's seed), trained on per-probe batches in one vmap.

    Args:
        make_probe: builds one fresh probe; called once per member under ``torch.manual_seed(member.seed)``.
        members: each probe's seed, learning rate, weight decay and gradient clip.
        query_inputs: the task's query-encoder inputs from one probe's batch targets (``Task.query_inputs``).
        loss: the task's scalar loss of one probe's output ``(B, Q, out)`` and batch targets (``Task.loss``);
            it runs under vmap, so it must not index by masks or branch on values.
        betas, eps: AdamW's (torch's defaults).
    """

    def __init__(self, make_probe: Callable[[], Probe], members: Sequence[Member],
                 query_inputs: Callable[[Targets], tuple[Tensor, ...]], loss: Callable[[Tensor, Targets], Tensor],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__()
        if not members:
            raise ValueError("ProbeBank needs at least one member")
        self.members = tuple(members)
        probes = []
        for m in self.members:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(m.seed)
                probes.append(make_probe())
        template = probes[0]
        self.names = [n for n, _ in template.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in template.named_parameters()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.buffer_names = [n for n, _ in template.named_buffers()]
        self.flat = nn.Parameter(torch.stack([torch.cat([p.detach().reshape(-1) for p in probe.parameters()])
                                              for probe in probes]))  # (P, N)
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"buffer{i}", torch.stack([dict(probe.named_buffers())[name] for probe in probes]))
        self.register_buffer("base_lr", torch.tensor([m.lr for m in self.members]))  # (P,)
        self.register_buffer("weight_decay", torch.tensor([m.weight_decay for m in self.members]))  # (P,)
        self.register_buffer("grad_clip", torch.tensor([m.grad_clip for m in self.members]))  # (P,)
        self.register_buffer("exp_avg", torch.zeros_like(self.flat))  # (P, N) AdamW's moments
        self.register_buffer("exp_avg_sq", torch.zeros_like(self.flat))
        self.steps = 0
        self.lr_scale = 1.0  #: the schedule's factor on every probe's rate, for the next step
        self.betas, self.eps = betas, eps
        self._query_inputs, self._loss = query_inputs, loss
        # the architecture without storage: functional_call swaps every probe's tensors in (kept out of the module
        # tree so .to() leaves it alone)
        self._base = [copy.deepcopy(template).to("meta")]

    def __len__(self) -> int:
        return len(self.members)

    def _state(self, rows: Tensor | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every probe's (or ``rows``') named parameters and buffers, each with a leading probe axis."""
        flat = self.flat if rows is None else self.flat[rows]
        params = {n: v.view(-1, *s) for n, v, s in zip(self.names, flat.split(self.sizes, dim=1), self.shapes,
                                                        strict=True)}
        buffers = {n: getattr(self, f"buffer{i}") for i, n in enumerate(self.buffer_names)}
        if rows is not None:
            buffers = {n: b[rows] for n, b in buffers.items()}
        return params, buffers

    def _call(self, fn: Callable[[Tensor, Targets], Tensor], features: Tensor, targets: Targets,
              rows: Tensor | None) -> Tensor:
        base = self._base[0].train(self.training)

        def one(params: dict[str, Tensor], buffers: dict[str, Tensor], feats: Tensor, tgt: Targets) -> Tensor:
            return fn(functional_call(base, (params, buffers), (feats, *self._query_inputs(tgt))), tgt)

        params, buffers = self._state(rows)
        if len(features) == 1:  # one probe: the plain call (vmap's batching rules cost time and buy nothing here)
            first = {n: v[0] for n, v in params.items()}, {n: b[0] for n, b in buffers.items()}
            return one(*first, features[0], {k: v[0] for k, v in targets.items()})[None]
        return vmap(one, randomness="different")(params, buffers, features, targets)

    def forward(self, features: Tensor, targets: Targets, rows: Tensor | None = None) -> Tensor:
        """``features (P, B, T_f, H_f, W_f, C)`` and each probe's batch targets ``(P, B, ...)`` -> every probe's
        output ``(P, B, Q, out_dim)``; with ``rows`` (indices), only those probes (inputs then lead with len(rows))."""
        return self._call(lambda out, tgt: out, features, targets, rows)

    def step(self, features: Tensor, targets: Targets) -> Tensor:
        """One AdamW step of every probe on its own batch (see :meth:`forward`); returns each probe's loss before
        the step, ``(P,)``, detached and on the bank's device (no host sync here)."""
        self.train()
        losses = self._call(self._loss, features, targets, None)  # (P,)
        (grad,) = torch.autograd.grad(losses.sum(), self.flat)  # (P, N): each row is its own loss's gradient
        clip = self.grad_clip[:, None]
        norm = grad.norm(dim=1, keepdim=True)  # (P, 1) as clip_grad_norm_: the norm over all of a probe's grads
        grad = torch.where(clip > 0, grad * (clip / (norm + 1e-6)).clamp(max=1.0), grad)
        self._adamw(grad)
        return losses.detach()

    @torch.no_grad()
    def _adamw(self, grad: Tensor) -> None:
        """torch.optim.AdamW's update (decoupled decay, bias-corrected moments) with a rate and decay per row."""
        self.steps += 1
        b1, b2 = self.betas
        lr = self.base_lr[:, None] * self.lr_scale  # (P, 1)
        self.flat.mul_(1.0 - lr * self.weight_decay[:, None])
        self.exp_avg.lerp_(grad, 1.0 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1.0 - b2 ** self.steps)).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg * (lr / (1.0 - b1 ** self.steps)), denom, value=-1.0)

    def set_lr_scale(self, scale: float) -> None:
        """Set every probe's rate to ``scale`` times its own (warm-up / cosine schedules)."""
        self.lr_scale = scale

    def _tensors(self) -> list[Tensor]:
        """Every probe's weights and buffers, each with a leading probe axis (what a snapshot holds)."""
        return [self.flat] + [getattr(self, f"buffer{i}") for i in range(len(self.buffer_names))]

    def snapshot(self, into: Sequence[Tensor] | None = None, rows: Tensor | None = None) -> list[Tensor]:
        """A copy of every probe's weights and buffers (leading probe axis), for :meth:`restore`; with ``into`` (an
        earlier snapshot) and ``rows`` (bool, ``(P,)``), that snapshot with only those probes' rows taken now."""
        now = [t.detach().clone() for t in self._tensors()]
        return now if into is None else [_where_rows(rows, n, old) for n, old in zip(now, into, strict=True)]

    @torch.no_grad()
    def restore(self, snapshot: Sequence[Tensor], rows: Tensor) -> None:
        """Put the probes where ``rows`` (bool, ``(P,)``) is set back to their state in ``snapshot``."""
        for current, saved in zip(self._tensors(), snapshot, strict=True):
            current.copy_(_where_rows(rows, saved, current))

    def probe(self, index: int) -> Probe:
        """Member ``index`` as a standalone :class:`Probe` (on the bank's device), with its current weights."""
        params, buffers = self._state(torch.tensor([index], device=self.flat.device))
        module = copy.deepcopy(self._base[0]).to_empty(device=self.flat.device)
        with torch.no_grad():
            for name, value in params.items():
                module.get_parameter(name).copy_(value[0])
            for name, value in buffers.items():
                module.get_buffer(name).copy_(value[0])
        return module


def _where_rows(rows: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new``'s rows where ``rows`` (bool, ``(P,)``) is set, ``old``'s elsewhere; both lead with the probe axis."""
    return torch.where(rows.view(-1, *[1] * (new.dim() - 1)), new, old)
