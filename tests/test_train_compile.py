"""The GPU path of the training loop, on the CPU: ``train.compile``, worker-fed batches, losses read only at log
time (a non-finite one still stops the run naming its step), and AdamW keeping its implementation across devices."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch
from torch import nn

from diffprobe.config import ConfigError
from diffprobe.models.exports import read_tensors
from diffprobe.train import EMA, TrainConfig, build_optimizer, fit, latest_checkpoint, load_checkpoint, make_batch_fn
from diffprobe.train.batching import resolve_workers
from diffprobe.train.optim import IMPLEMENTATION_KEYS


class Net(nn.Module):
    """An MLP with dropout (global RNG)."""

    def __init__(self, seed: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(4, 16)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 4) -> (B,)
        return self.head(self.drop(torch.relu(self.embed(x)))).squeeze(-1)


class Data:
    """32 points of y = sum(x); items draw from the global torch, NumPy and Python RNGs (augmentation)."""

    def __init__(self) -> None:
        self.x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))  # (N, 4)

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        jitter = 0.01 * (torch.rand(4) + float(np.random.rand()) + random.random())  # (4,)
        return {"x": self.x[i] + jitter, "y": self.x[i].sum()}


def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator):
    noise = 0.05 * torch.randn(batch["x"].shape, generator=gen, device=batch["x"].device)  # (B, 4)
    loss = nn.functional.mse_loss(model(batch["x"] + noise), batch["y"])
    return loss, {"mse": loss.detach()}


CFG = TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=2, ema_decay=0.5, log_every=2, ckpt_every=3,
                  seed=5, device="cpu", tensorboard=False)


def _fit(run_dir, cfg: TrainConfig = CFG, fn=loss_fn, dropout: float = 0.1):
    return fit(Net(dropout=dropout), fn, make_batch_fn(Data(), cfg.batch_size, cfg.seed), cfg, run_dir, cfg,
               progress=False)


def test_compile_trains_and_checkpoints_the_plain_state_dict(tmp_path) -> None:
    """torch.compile on this 2-core CPU: 17 s with an empty inductor cache (another job running), 2-5 s warm.
    Without dropout: compiled dropout draws its masks from inductor's own generator, not eager's stream."""
    eager = _fit(tmp_path / "eager", CFG.replace(steps=3), dropout=0.0)
    start = time.perf_counter()
    compiled = _fit(tmp_path / "compiled", CFG.replace(steps=3, compile=True), dropout=0.0)
    assert time.perf_counter() - start < 120, "torch.compile took too long on this CPU"
    assert list(compiled.losses) == [1, 2, 3]
    for step, value in eager.losses.items():
        assert compiled.losses[step] == pytest.approx(value, rel=1e-5), step
    step, ckpt = latest_checkpoint(tmp_path / "compiled")
    assert step == 3
    for file in ("model.safetensors", "ema.safetensors"):
        keys = set(read_tensors(ckpt / file))
        assert keys == set(Net().state_dict()), (file, keys)  # no `_orig_mod.` prefix
    fresh = Net(seed=9)
    ema = EMA(fresh, CFG.ema_decay)
    load_checkpoint(ckpt, fresh, build_optimizer(fresh, CFG), ema)  # strict: every key, shape and group must fit
    assert torch.equal(fresh.head.weight, compiled.model.head.weight)
    assert torch.equal(ema.shadow["head.weight"], compiled.ema.shadow["head.weight"])


def test_data_workers_reproduce_the_in_process_run(tmp_path) -> None:
    plain = _fit(tmp_path / "plain", CFG.replace(data_workers=0))
    workers = _fit(tmp_path / "workers", CFG.replace(data_workers=2))
    assert workers.losses == plain.losses  # bit-identical: same batches, same RNG states after them
    for name, value in plain.model.state_dict().items():
        assert torch.equal(value, workers.model.state_dict()[name]), name
    # killed during step 5 and resumed from the step-3 checkpoint: the feed starts there and goes on exactly
    calls = [0]

    def killed_at_step_5(model, batch, gen):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt
        return loss_fn(model, batch, gen)

    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "cut", CFG.replace(data_workers=2), killed_at_step_5)
    resumed = _fit(tmp_path / "cut", CFG.replace(data_workers=2))
    assert resumed.losses == {s: v for s, v in plain.losses.items() if s > 3}


def test_non_finite_loss_is_found_at_the_next_read_and_nothing_after_it_is_saved(tmp_path) -> None:
    calls = [0]

    def bad_at_step_4(model, batch, gen):
        calls[0] += 1
        loss, logs = loss_fn(model, batch, gen)
        return (loss * float("nan") if calls[0] == 4 else loss), logs

    cfg = CFG.replace(steps=10, log_every=5, ckpt_every=3)
    with pytest.raises(FloatingPointError, match=r"step 4: loss is nan \(read with steps 4-5"):
        _fit(tmp_path, cfg, bad_at_step_4)
    assert calls[0] == 5  # the step did not wait for the host: the loss was read at the log step after it
    assert latest_checkpoint(tmp_path)[0] == 3


def test_optimizer_keeps_its_implementation_when_loading_another_devices_state() -> None:
    model = Net()
    opt = build_optimizer(model, CFG)
    assert opt.param_groups[0]["fused"] is None  # CPU: torch's default implementation, as before
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    state = opt.state_dict()
    for group in state["param_groups"]:  # as a fused CUDA run saves it
        group.update(fused=True, foreach=False)
    fresh = build_optimizer(Net(), CFG)
    fresh.load_state_dict(state)
    assert [{k: g[k] for k in IMPLEMENTATION_KEYS} for g in fresh.param_groups] == [
        {k: g[k] for k in IMPLEMENTATION_KEYS} for g in opt.param_groups]
    assert fresh.param_groups[0]["lr"] == opt.param_groups[0]["lr"]  # the maths still comes from the state


def test_data_workers_config() -> None:
    assert TrainConfig().data_workers == "auto" and TrainConfig().tf32 and not TrainConfig().compile
    assert resolve_workers("auto", torch.device("cpu")) == 0
    assert resolve_workers(3, torch.device("cpu")) == 3
    assert TrainConfig().override(["data_workers=2"]).data_workers == 2
    with pytest.raises(ConfigError, match="data_workers"):
        TrainConfig(data_workers=-1)
    with pytest.raises(ConfigError, match="data_workers"):
        TrainConfig.from_dict({"data_workers": "many"})
