"""The shared training loop: exact resume, schedule, weight-decay groups, checkpoints, pruning, metrics, DDP."""

from __future__ import annotations

import math
import socket

import pytest
import torch
from torch import nn

from diffprobe.config import ConfigError
from diffprobe.train import (
    EMA,
    CheckpointError,
    MetricsLogger,
    TrainConfig,
    batch_indices,
    build_optimizer,
    fit,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_weights,
    lr_at,
    make_batch_fn,
    param_groups,
    read_metrics,
)
from diffprobe.train.precision import check_precision
from diffprobe.utils.distributed import cleanup_distributed


class TinyNet(nn.Module):
    """An MLP with a norm and dropout (global RNG), so that resume must restore randomness too."""

    def __init__(self, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(4, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 4) -> (B,)
        return self.head(self.drop(torch.relu(self.norm(self.embed(x))))).squeeze(-1)


class Regression:
    """64 points of y = x . w + 0.5 as a map-style dataset of dicts."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(123)
        self.x = torch.randn(64, 4, generator=gen)  # (N, 4)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 1.5]) + 0.5  # (N,)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator):
    x = batch["x"] + 0.05 * torch.randn(batch["x"].shape, generator=gen, device=batch["x"].device)  # (B, 4)
    loss = nn.functional.mse_loss(model(x), batch["y"])
    return loss, {"mse": loss.detach()}


CFG = TrainConfig(steps=20, batch_size=8, lr=3e-2, warmup_steps=3, min_lr_ratio=0.1, weight_decay=0.01,
                  ema_decay=0.9, ema_start=2, log_every=1, ckpt_every=4, keep_last=2, seed=3, device="cpu",
                  tensorboard=False)
BATCHES = make_batch_fn(Regression(), CFG.batch_size, CFG.seed)


class Killed(Exception):
    pass


def killing_loss_fn(after_calls: int):
    """A loss_fn that dies on call number ``after_calls + 1`` (simulates a kill mid-run)."""
    calls = [0]

    def fn(model, batch, gen):
        calls[0] += 1
        if calls[0] > after_calls:
            raise Killed
        return loss_fn(model, batch, gen)

    return fn


def refusing_loss_fn(model, batch, gen):
    raise AssertionError("loss_fn must not be called")


def run(run_dir, cfg=CFG, fn=loss_fn, model_seed=0, **kw):
    return fit(TinyNet(seed=model_seed), fn, BATCHES, cfg, run_dir, {"train": cfg.to_dict()}, progress=False, **kw)


def loss_rows(run_dir) -> list[tuple[int, float]]:
    return [(s, v) for s, n, v, _ in read_metrics(run_dir / "metrics.csv") if n == "train/loss"]


def test_resume_is_bit_identical_and_relaunch_is_noop(tmp_path) -> None:
    full = run(tmp_path / "full")
    assert sorted(full.losses) == list(range(1, 21))
    first, last = sum(list(full.losses.values())[:5]), sum(list(full.losses.values())[-5:])
    assert last < 0.5 * first, full.losses  # the loss falls

    # Killed during step 14: checkpoints 4, 8, 12 exist, metrics.csv already holds rows up to step 13.
    with pytest.raises(Killed):
        run(tmp_path / "cut", fn=killing_loss_fn(13))
    assert latest_checkpoint(tmp_path / "cut")[0] == 12
    assert max(s for s, _ in loss_rows(tmp_path / "cut")) == 13
    resumed = run(tmp_path / "cut", model_seed=99)  # a differently initialised model: weights must come from disk
    assert sorted(resumed.losses) == list(range(13, 21))
    for step, value in resumed.losses.items():
        assert value == full.losses[step], step  # bit-identical, not approximately equal
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for name, value in full.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[name]), name
    assert not torch.equal(full.ema.shadow["head.weight"], full.model.head.weight)  # EMA really averages

    # metrics.csv: every step once, values equal to the uninterrupted run.
    assert loss_rows(tmp_path / "cut") == loss_rows(tmp_path / "full")
    assert [s for s, _ in loss_rows(tmp_path / "cut")] == list(range(1, 21))

    # A finished run relaunched does nothing: no loss_fn call, no file touched, weights loaded.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "full").rglob("*")}
    again = run(tmp_path / "full", fn=refusing_loss_fn, model_seed=7)
    assert again.step == 20 and again.losses == {}
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "full").rglob("*")} == before
    assert torch.equal(again.model.head.weight, full.model.head.weight)
    assert torch.equal(again.ema_model().head.weight, full.ema.shadow["head.weight"])

    with pytest.raises(CheckpointError, match="resume"):
        run(tmp_path / "full", resume=False)


def test_lr_schedule_values() -> None:
    kw = {"base_lr": 1.0, "warmup_steps": 4, "total_steps": 20, "min_lr_ratio": 0.1}
    assert lr_at(0, **kw) == 0.25
    assert lr_at(2, **kw) == 0.75
    assert lr_at(4, **kw) == 1.0  # warm-up done, cosine at progress 0
    assert lr_at(12, **kw) == pytest.approx(0.55)  # progress 1/2: 0.1 + 0.9 * 0.5
    assert lr_at(16, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_at(20, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)


class DecayNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(10, 4)
        self.pos = nn.Parameter(torch.randn(3, 4))
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self) -> list[str]:
        return ["pos"]


def test_no_weight_decay_on_biases_norms_embeddings_declared() -> None:
    model = DecayNet()
    groups = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups[0]["params"]} == {"proj.weight"}
    assert {names[id(p)] for p in groups[1]["params"]} == {"tok.weight", "pos", "proj.bias", "norm.weight",
                                                             "norm.bias"}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0

    # Behaviour: with zero gradients AdamW only applies decoupled decay, so only proj.weight moves.
    opt = build_optimizer(model, TrainConfig(lr=0.5, weight_decay=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        expected = before[name] * (1 - 0.5 * 0.1) if name == "proj.weight" else before[name]
        assert torch.equal(p.detach(), expected), name


def test_bad_checkpoints_raise_errors_naming_the_file(tmp_path) -> None:
    cfg = CFG.replace(steps=4)
    result = run(tmp_path, cfg=cfg)
    _, ckpt = latest_checkpoint(tmp_path)
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "ema.safetensors", "config.json",
                                                 "trainer_state.pt"}

    # load_model_weights gives the EMA weights by default, the raw ones on request.
    model = load_model_weights(ckpt, TinyNet(seed=5))
    assert torch.equal(model.head.weight, result.ema.shadow["head.weight"])
    assert torch.equal(load_model_weights(ckpt, TinyNet(seed=5), ema=False).head.weight, result.model.head.weight)

    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(shape|missing)"):
        load_checkpoint(ckpt, TinyNet(hidden=8))
    extra = TinyNet()
    extra.register_buffer("extra", torch.zeros(2))
    with pytest.raises(CheckpointError, match=r"missing keys \['extra'\]"):
        load_checkpoint(ckpt, extra)

    (ckpt / "trainer_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="trainer_state.pt"):
        load_checkpoint(ckpt, TinyNet())
    with pytest.raises(CheckpointError, match="trainer_state.pt"):  # resume does not swallow it either
        run(tmp_path, cfg=cfg.replace(steps=8))

    (ckpt / "ema.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="ema.safetensors"):
        load_model_weights(ckpt, TinyNet())
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model_weights(ckpt, TinyNet(), ema=False)


def test_pruning_keeps_last_and_pinned_and_hook_sees_each_checkpoint(tmp_path) -> None:
    seen = []

    def hook(step, path):
        assert (path / "model.safetensors").is_file()
        seen.append(step)

    cfg = CFG.replace(steps=20, ckpt_every=2, keep_last=2, keep_steps=(6,), keep_every=8, log_every=5,
                      tensorboard=True)
    run(tmp_path, cfg=cfg, on_checkpoint=hook)
    assert seen == list(range(2, 21, 2))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6, 8, 16, 18, 20]
    assert latest_checkpoint(tmp_path)[0] == 20
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".")]  # no temp leftovers
    assert any((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert sorted({s for s, _ in loss_rows(tmp_path)}) == [5, 10, 15, 20]


def test_metrics_logger_drops_rows_after_resume_step_and_torn_line(tmp_path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for step in range(1, 6):
            log.log(step, {"a": step * 0.1, "b": 1.0 / 3.0})
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("6,a,0.6")  # torn by a kill
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r[0] for r in rows] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert rows[1][2] == 1.0 / 3.0  # values round-trip exactly
    with MetricsLogger(tmp_path, start_step=3, tensorboard=False) as log:
        log.log(4, {"a": 9.0})
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [(r[0], r[1], r[2]) for r in rows if r[1] == "a"] == [(1, "a", 0.1), (2, "a", 0.2), (3, "a", 0.1 * 3),
                                                                (4, "a", 9.0)]
    (tmp_path / "metrics.csv").write_text("step,name,value,wall_time\n1,a,oops,0\n")
    with pytest.raises(ValueError, match=r"metrics\.csv: line 2"):
        read_metrics(tmp_path / "metrics.csv")


def test_batches_are_sharded_by_rank_and_cover_each_epoch() -> None:
    whole = [batch_indices(s, 10, 4, seed=1) for s in range(5)]  # 20 positions = 2 epochs
    assert sorted(sum(whole, [])[:10]) == list(range(10)) and sorted(sum(whole, [])[10:]) == list(range(10))
    assert sum(whole, [])[:10] != sum(whole, [])[10:]  # each epoch reshuffled
    for s in range(5):
        assert batch_indices(s, 10, 4, 1, rank=0, world_size=2) + batch_indices(s, 10, 4, 1, 1, 2) == whole[s]
    data = Regression()
    b = make_batch_fn(data, 4, seed=1, rank=1, world_size=2)(3)
    assert torch.equal(b["x"], data.x[batch_indices(3, 64, 4, 1, 1, 2)])
    with pytest.raises(ValueError, match="divisible"):
        make_batch_fn(data, 5, seed=1, world_size=2)


def test_ema_update_and_applied() -> None:
    model = nn.Linear(2, 1)
    ema = EMA(model, decay=0.5, start=1)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model, 1)  # up to `start`: copy
    assert torch.equal(ema.shadow["weight"], torch.full((1, 2), 2.0))
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model, 2)  # 0.5 * 2 + 0.5 * 4
    assert torch.equal(ema.shadow["weight"], torch.full((1, 2), 3.0))
    with ema.applied(model):
        assert torch.equal(model.weight, torch.full((1, 2), 3.0))
    assert torch.equal(model.weight, torch.full((1, 2), 4.0))


def test_config_and_precision_errors() -> None:
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig.from_dict({"ema_decay": 1.5})
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig.from_dict({"precision": "fp16"})
    assert TrainConfig.preset("tiny").steps > 0
    check_precision("bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match="bf16"):
        check_precision("bf16", torch.device("meta"))


def test_bf16_autocast_trains_on_cpu(tmp_path) -> None:
    result = run(tmp_path, cfg=CFG.replace(steps=3, precision="bf16", ema_decay=0.0))
    assert result.ema is None and all(math.isfinite(v) for v in result.losses.values())


def test_single_rank_ddp_matches_plain_run(tmp_path, monkeypatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = CFG.replace(steps=4)
    plain = run(tmp_path / "plain", cfg=cfg)
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    try:
        ddp = run(tmp_path / "ddp", cfg=cfg)
    finally:
        cleanup_distributed()
    assert ddp.losses == plain.losses
    assert torch.equal(ddp.model.head.weight, plain.model.head.weight)


TORCHRUN_SCRIPT = '''
import sys
import torch
from torch import nn
from diffprobe.train import TrainConfig, fit, make_batch_fn, setup_distributed, cleanup_distributed

class Data:
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 4, generator=g)
    def __len__(self):
        return 32
    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.x[i].sum()}

def loss_fn(model, batch, gen):
    noise = 0.05 * torch.randn(batch["x"].shape, generator=gen)
    loss = nn.functional.mse_loss(model(batch["x"] + noise).squeeze(-1), batch["y"])
    return loss, {}

cfg = TrainConfig(steps=6, batch_size=8, lr=1e-2, ema_decay=0.5, log_every=1, ckpt_every=3, device="cpu",
                  tensorboard=False)
ctx = setup_distributed(cfg.device)
torch.manual_seed(ctx.rank)  # different init per rank: DDP must broadcast rank 0's weights
model = nn.Linear(4, 1)
batches = make_batch_fn(Data(), cfg.batch_size, cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
result = fit(model, loss_fn, batches, cfg, sys.argv[1], cfg, progress=False)
torch.save({"weight": result.model.weight.detach(), "ema": result.ema.shadow["weight"]},
           f"{sys.argv[1]}/rank{ctx.rank}.pt")
cleanup_distributed()
'''


@pytest.mark.slow
def test_torchrun_two_cpu_ranks(tmp_path) -> None:
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(run_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(run_dir / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["weight"], r1["weight"]) and torch.equal(r0["ema"], r1["ema"])  # ranks stay in sync
    assert [s for s, _ in list_checkpoints(run_dir)] == [3, 6]
    assert [s for s, _ in loss_rows(run_dir)] == list(range(1, 7))  # rank 0 alone writes metrics
