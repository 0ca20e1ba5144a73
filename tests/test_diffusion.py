"""The diffusion process: schedule values, noising, v conversions, the loss, and the DDIM sampler."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffprobe.diffusion import (
    DEFAULT_SCHEDULE,
    NoiseSchedule,
    add_noise,
    ddim_sample,
    diffusion_loss,
    v_target,
    v_to_eps,
    v_to_x0,
)
from diffprobe.models import WALT, WALTConfig


def _x0(b: int = 2, t: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn((b, 4, t, 4, 4), generator=torch.Generator().manual_seed(seed))  # (B, C, T', H', W')


def test_schedules_hand_values() -> None:
    cos = NoiseSchedule("cosine")
    t = torch.tensor([0.0, 500.0, 1000.0])
    s = 0.008
    want_500 = math.cos((0.5 + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    ab = cos.alpha_bar(t)
    assert ab[0].item() == 1.0
    assert ab[1].item() == pytest.approx(want_500, rel=1e-6)
    assert ab[2].item() == pytest.approx(1e-6)
    lin = NoiseSchedule("linear")
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    for n in (1, 10, 999, 1000):
        assert lin.alpha_bar(torch.tensor(float(n))).item() == pytest.approx(torch.prod(1 - betas[:n]).item(), rel=1e-5)
    # continuous t interpolates log alpha_bar between steps
    mid = lin.alpha_bar(torch.tensor(10.5)).item()
    assert mid == pytest.approx(math.sqrt(torch.prod(1 - betas[:10]).item() * torch.prod(1 - betas[:11]).item()),
                                rel=1e-6)
    grid = torch.linspace(0, 1000, 101)
    for sched in (cos, lin):
        assert (sched.alpha_bar(grid).diff() < 0).all()
    with pytest.raises(ValueError, match=r"\[0, 1000\]"):
        cos.alpha_bar(torch.tensor([1001.0]))
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule("quadratic")  # type: ignore[arg-type]


def test_add_noise_ends() -> None:
    x0 = _x0()
    eps = _x0(seed=1)
    assert torch.equal(add_noise(x0, torch.zeros(2), eps), x0)
    x_t = add_noise(x0, torch.full((2,), 1000.0), eps)
    assert (x_t - eps).abs().max() < 5e-3  # sqrt(1e-6) * |x0| at most ~ 4e-3
    # at t = 500 the cosine schedule has nearly equal signal and noise
    a = DEFAULT_SCHEDULE.alpha_bar(torch.tensor(500.0)).item()
    torch.testing.assert_close(add_noise(x0, torch.full((2,), 500.0), eps), math.sqrt(a) * x0 + math.sqrt(1 - a) * eps)


def test_per_frame_noise_levels() -> None:
    x0, eps = _x0(), _x0(seed=1)
    t = torch.tensor([[0.0, 300.0, 1000.0], [50.0, 50.0, 50.0]])
    x_t = add_noise(x0, t, eps)
    for f in range(3):
        torch.testing.assert_close(x_t[:, :, f], add_noise(x0, t[:, f], eps)[:, :, f])
    torch.testing.assert_close(x_t[1], add_noise(x0, torch.full((2,), 50.0), eps)[1])
    with pytest.raises(ValueError, match="t must have shape"):
        add_noise(x0, torch.zeros(2, 4), eps)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_v_conversions_recover_x0_and_eps(kind: str) -> None:
    sched = NoiseSchedule(kind)  # type: ignore[arg-type]
    x0, eps = _x0(b=4), _x0(b=4, seed=1)
    t = torch.tensor([[0.0, 1.0, 2.0], [200.0, 400.0, 600.0], [999.0, 1000.0, 500.0], [0.5, 75.0, 990.0]])
    x_t = add_noise(x0, t, eps, sched)
    v = v_target(x0, eps, t, sched)
    torch.testing.assert_close(v_to_x0(x_t, v, t, sched), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_to_eps(x_t, v, t, sched), eps, atol=1e-5, rtol=1e-5)
    # v is eps at t = 0 and -x0 at pure noise
    torch.testing.assert_close(v[0, :, 0], eps[0, :, 0])
    residual = 5 * sched.alpha_bar(torch.tensor(1000.0)).sqrt().item()  # |sqrt(ab) * eps| at t = 1000, 5 sigma
    torch.testing.assert_close(v[2, :, 1], -x0[2, :, 1], atol=residual, rtol=0)


class Oracle(nn.Module):
    """Knows the clean latents ``x0``; returns the exact v for any ``x_t`` and records the noise it implies."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("x0", x0)
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the sampler a device to read
        self.implied_eps: list[torch.Tensor] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        a = DEFAULT_SCHEDULE.alpha_bar(t).reshape(-1, 1, 1, 1, 1)
        eps = (x_t - a.sqrt() * self.x0) / (1 - a).sqrt()
        self.implied_eps.append(eps)
        return a.sqrt() * eps - (1 - a).sqrt() * self.x0


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_oracle_reproduces_x0(eta: float) -> None:
    x0 = _x0()
    oracle = Oracle(x0)
    out = ddim_sample(oracle, tuple(x0.shape), steps=8, generator=torch.Generator().manual_seed(0), eta=eta,
                      progress=False)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)
    assert len(oracle.implied_eps) == 8
    if eta == 0.0:  # deterministic DDIM stays on one trajectory: the same noise at every step
        for eps in oracle.implied_eps[1:]:
            torch.testing.assert_close(eps, oracle.implied_eps[0], atol=1e-4, rtol=1e-4)


def _trained_like_walt(**overrides: object) -> WALT:
    torch.manual_seed(0)
    cfg = WALTConfig.preset("tiny").replace(in_channels=4, depth=2, hidden_size=32, num_heads=2,
                                            spatial_window=[2, 2], spatiotemporal_window=[3, 2, 2], **overrides)
    model = WALT(cfg).eval()
    with torch.no_grad():  # random output layers, so the sampler has something to follow
        for p in model.parameters():
            if (p == 0).all():
                p.normal_(0, 0.05)
    return model


def test_ddim_is_reproducible_from_the_seed() -> None:
    model = _trained_like_walt()
    shape = (2, 4, 3, 4, 4)
    for eta in (0.0, 1.0):
        a = ddim_sample(model, shape, 5, torch.Generator().manual_seed(7), eta=eta, progress=False)
        b = ddim_sample(model, shape, 5, torch.Generator().manual_seed(7), eta=eta, progress=False)
        c = ddim_sample(model, shape, 5, torch.Generator().manual_seed(8), eta=eta, progress=False)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        assert a.shape == shape and torch.isfinite(a).all()


def test_classifier_free_guidance() -> None:
    model = _trained_like_walt(num_classes=3)
    shape, y = (2, 4, 3, 4, 4), torch.tensor([0, 2])

    def sample(y: torch.Tensor | None, scale: float) -> torch.Tensor:
        return ddim_sample(model, shape, 4, torch.Generator().manual_seed(1), y=y, guidance_scale=scale,
                           progress=False)

    torch.testing.assert_close(sample(y, 0.0), sample(None, 1.0), atol=1e-5, rtol=1e-5)  # scale 0 = unconditional
    cond = sample(y, 1.0)
    assert (sample(y, 3.0) - cond).abs().max() > 1e-4
    with pytest.raises(ValueError, match="labels"):
        sample(None, 2.0)


class Recorder(nn.Module):
    """Returns zeros and records the (t, y) it is called with."""

    def __init__(self, cfg: WALTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((t, y))
        return torch.zeros_like(x)


def test_loss_draws_everything_from_the_generator() -> None:
    x0 = _x0(b=64)
    rec = Recorder(WALTConfig(in_channels=4, num_classes=5, class_dropout_prob=0.5))
    y = torch.arange(64) % 5
    l1 = diffusion_loss(rec, x0, torch.Generator().manual_seed(3), y=y)
    l2 = diffusion_loss(rec, x0, torch.Generator().manual_seed(3), y=y)
    assert torch.equal(l1, l2)
    (t1, y1), (t2, y2) = rec.calls
    assert torch.equal(t1, t2) and torch.equal(y1, y2)
    assert t1.shape == (64,) and t1.min() >= 0 and t1.max() <= 1000
    dropped = y1 == 5
    assert 15 < int(dropped.sum()) < 49  # about half replaced by the null class
    assert torch.equal(y1[~dropped], y[~dropped])
    # a zero prediction's loss is the mean of v^2 for the drawn t and noise (hand-computed from the same draws)
    g = torch.Generator().manual_seed(3)
    t = torch.rand((64,), generator=g) * 1000
    eps = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(l1, v_target(x0, eps, t).square().mean())
    diffusion_loss(rec, _x0(b=2), torch.Generator().manual_seed(3), per_frame_t=True)
    t_pf, y_pf = rec.calls[-1]
    assert t_pf.shape == (2, 3) and y_pf is None
    assert (t_pf[:, 0] != t_pf[:, 1]).all()


def test_loss_falls_when_training_tiny_walt() -> None:
    torch.manual_seed(0)
    model = WALT(WALTConfig.preset("tiny"))
    # a fixed batch of structured latents: smooth in space, drifting in time
    tt, yy, xx = torch.meshgrid(torch.arange(5.0), torch.arange(8.0), torch.arange(8.0), indexing="ij")
    base = torch.stack([torch.sin(0.7 * xx + k * 0.5 * tt + k) * torch.cos(0.5 * yy - 0.3 * k) for k in range(8)])
    x0 = torch.stack([base, -base, base.flip(-1), base.roll(2, dims=-2)])  # (4, 8, 5, 8, 8)

    def evaluate() -> float:
        with torch.no_grad():  # the same t and noise every time
            return sum(diffusion_loss(model, x0, torch.Generator().manual_seed(s)).item() for s in range(4)) / 4

    before = evaluate()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        opt.zero_grad()
        diffusion_loss(model, x0, gen, per_frame_t=True).backward()
        opt.step()
    after = evaluate()
    assert after < 0.8 * before, (before, after)  # measured: 0.711 -> 0.456 (ratio 0.64)
