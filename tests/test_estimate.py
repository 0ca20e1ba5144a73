"""The study's cost estimate: FLOPs counted on the meta device equal a counted CPU pass and a hand count, stages
scale with their steps and batches, the GPU presets load, and `diffprobe study --estimate` prints and writes
nothing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from diffprobe.cli import main
from diffprobe.models import WALT, WALTConfig
from diffprobe.study.config import StudyConfig
from diffprobe.study.estimate import StageCost, StudyCost, _streamed_clips, count_flops, estimate_study
from diffprobe.study.plan import plan_jobs

MINI = ["dataset=probeworld:tiny@train_size=48,val_size=16,test_size=16", "probe_seeds=[0]",
        'sweep_tasks=["action"]', "noise_sweep=[0,200]", "block_sweep=[2,4]", "tasks=[\"action\",\"depth\"]"]


def test_a_linear_layer_counts_by_hand() -> None:
    build, inputs = (lambda: nn.Linear(8, 4, bias=False)), (lambda: (torch.zeros(3, 8),))
    assert count_flops(build, inputs, backward=False) == 2 * 3 * 8 * 4
    assert count_flops(build, inputs, backward=True) == 2 * 2 * 3 * 8 * 4  # forward + the weight's gradient (inputs
    # need none)


def test_meta_count_equals_a_counted_cpu_pass_of_walt() -> None:
    cfg = WALTConfig.from_dict(WALTConfig.PRESETS["tiny"])
    torch.manual_seed(0)
    model, x, t = WALT(cfg), torch.randn(2, 8, 5, 8, 8), torch.rand(2) * 1000  # (B, C, T', H', W')
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # attention as counted matmuls
        model(x, t).square().mean().backward()
    meta = count_flops(lambda: WALT(cfg), lambda: (torch.zeros(2, 8, 5, 8, 8), torch.zeros(2)), backward=True)
    assert meta == counter.get_total_flops() > 1e9


def test_stages_scale_with_steps_and_batch() -> None:
    cfg = StudyConfig.preset("tiny").override(MINI)
    base = {s.name: s for s in estimate_study(cfg).stages}
    assert list(base) == ["tokenizer", "twin main-video", "twin main-image", "feature net", "extract", "probes",
                          "match"]
    assert "match" not in {s.name for s in estimate_study(cfg.replace(match=False)).stages}
    assert "0 extraction groups of their own" in base["match"].detail  # the probes' sweeps extract its features
    lone = {s.name: s for s in estimate_study(cfg.replace(sweep_tasks=())).stages}  # the probes sweep nothing:
    assert "2 extraction groups of their own" in lone["match"].detail  # the twins at t 0, which no probe reads
    assert lone["match"].flops > base["match"].flops
    more = {s.name: s for s in estimate_study(cfg.override(
        ["tokenizer.train.steps=600", "twin.train.batch_size=32", "probe.steps=800"])).stages}
    assert more["tokenizer"].flops == 2 * base["tokenizer"].flops and more["tokenizer"].steps == 600
    for mode in ("video", "image"):
        assert more[f"twin main-{mode}"].flops == pytest.approx(2 * base[f"twin main-{mode}"].flops, rel=1e-9)
    assert base["probes"].flops < more["probes"].flops < 2 * base["probes"].flops  # evaluation does not double
    assert more["extract"] == base["extract"] and more["feature net"] == base["feature net"]


def test_seconds_add_flops_and_step_overhead() -> None:
    cost = StudyCost((StageCost("a", 4e12, 10, "", ddp=True), StageCost("b", 2e12, 30, "")), ())
    assert cost.seconds(1e12) == {"a": 4.0, "b": 2.0, "total": 6.0}
    assert cost.seconds(2e12, step_seconds=0.1) == pytest.approx({"a": 3.0, "b": 4.0, "total": 7.0})
    # on 2 ranks the FLOPs halve everywhere; DDP's steps run on every rank, dealt-out steps halve
    assert cost.seconds(2e12, step_seconds=0.1, devices=2) == pytest.approx({"a": 2.0, "b": 2.0, "total": 4.0})


def test_gpu_presets_load_and_cost_more() -> None:
    """On the same tasks, base costs more than small in every stage, and a base twin's training step, per clip, at
    least its larger network's share more (its clips are no smaller, so it has no fewer tokens)."""
    small, base = StudyConfig.preset("small"), StudyConfig.preset("base")
    assert "estimate" in small.caveat and "estimate" in base.caveat and small.twin.model.hidden_size == 384
    assert base.twin.model.hidden_size == 768 and base.twin.train.precision == small.twin.train.precision == "bf16"
    assert 1 <= small.block <= small.twin.model.depth and small.block == 2 * small.twin.model.depth // 3
    one_task = ['tasks=["action"]', 'sweep_tasks=["action"]']  # the same plan for both (every task: 2x the time)
    costs = {name: {s.name: s for s in estimate_study(cfg.override(one_task)).stages}
             for name, cfg in (("small", small), ("base", base))}
    assert list(costs["base"]) == list(costs["small"])
    assert all(costs["base"][stage].flops > costs["small"][stage].flops for stage in costs["small"]), costs
    with torch.device("meta"):
        params = {name: sum(p.numel() for p in WALT(cfg.twin.model).parameters())
                  for name, cfg in (("small", small), ("base", base))}
    per_clip = {name: costs[name]["twin main-video"].flops / costs[name]["twin main-video"].steps
                / cfg.twin.train.batch_size for name, cfg in (("small", small), ("base", base))}
    assert per_clip["base"] / per_clip["small"] >= params["base"] / params["small"] > 3


def test_estimate_command_prints_and_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["study", "--estimate", "--peak-tflops", "1", "--mfu", "0.5", "--devices", "2"]
    result = CliRunner().invoke(main, [*args, *(a for kv in MINI for a in ("--set", kv))])
    assert result.exit_code == 0, result.output
    assert "estimate (not a measurement)" in result.output and "probes" in result.output
    assert "at 50% of 1 TFLOP/s per device (given) x 2 device(s)" in result.output and "minutes" in result.output
    assert not list(tmp_path.iterdir())  # no run directory
    bad = CliRunner().invoke(main, ["study", "--estimate", "--mfu", "2"])
    assert bad.exit_code == 2 and "--mfu" in bad.output


def test_probe_steps_are_the_banks_vectorised_steps() -> None:
    """More seeds and a larger grid add probes to the same banks: FLOPs grow with the probes, steps do not (and a cap
    on the bank size cuts the banks it passes)."""
    cfg = StudyConfig.preset("tiny").override([*MINI, "probe.bank_size=0", "probe.bank_gflop=0"])
    one = {s.name: s for s in estimate_study(cfg).stages}["probes"]
    many = {s.name: s for s in estimate_study(cfg.override(
        ["probe_seeds=[0,1,2]", "probe.readout.learning_rates=[0.001,0.002]"])).stages}["probes"]
    assert many.steps == one.steps
    seeds = {s.name: s for s in estimate_study(cfg.override(["probe_seeds=[0,1,2]"])).stages}["probes"]
    assert seeds.steps == one.steps and one.flops < seeds.flops < 3 * one.flops  # the sweeps keep one seed
    assert many.flops == pytest.approx(2 * seeds.flops, rel=1e-12)  # two rates: every cell is two probes
    assert "2 probes in" in many.detail
    capped = {s.name: s for s in estimate_study(cfg.override(["probe.bank_size=1"])).stages}["probes"]
    assert capped.flops == one.flops and capped.steps > one.steps


def test_pixel_cells_count_their_probes_and_no_extraction() -> None:
    """The pixels control's cells are counted (their own token grid and channels), and its extraction, a reshape of
    the cached clips, adds nothing."""
    cfg = StudyConfig.preset("tiny").override(MINI)
    without = {k: v for k, v in cfg.backbones.items() if k != "pixels"}
    full = {s.name: s for s in estimate_study(cfg).stages}
    less = {s.name: s for s in estimate_study(cfg.replace(backbones=without)).stages}
    assert estimate_study(cfg).uncounted == ()
    assert full["extract"].flops == less["extract"].flops
    assert full["probes"].flops > less["probes"].flops
    assert f"{len(plan_jobs(cfg, Path('runs/estimate')))} cells" in full["probes"].detail
    # counted on its own grid: patch 4 makes 4x the tokens (of a quarter of the channels) of the default patch 8
    finer = {s.name: s for s in estimate_study(cfg.replace(backbones={**without, "pixels": "pixels@patch=4,tubelet=2"})
                                               ).stages}["probes"]
    assert less["probes"].flops < full["probes"].flops < finer.flops


def test_the_feature_cache_is_counted_by_hand() -> None:
    """Two pixels backbones, one task, no sweeps: each feature set's bytes are clips x grid x channels x fp16."""
    cfg = StudyConfig.preset("tiny").replace(
        backbones={"a": "pixels@patch=8,tubelet=2", "b": "pixels@patch=4"}, reference=("a", "b"), control="",
        tasks=("action",), sweep_tasks=(), noise_sweep=(), block_sweep=(), budget_steps=(), sizes={})
    clips = sum(cfg.probe_clips.values())
    a = 5 * 4 * 4 * (2 * 8 * 8 * 3)  # 9 frames at tubelet 2 (frame 0 repeated): 5 x 4 x 4 tokens of 384
    b = 9 * 8 * 8 * (4 * 4 * 3)
    assert estimate_study(cfg).feature_bytes == clips * (a + b) * 2
    tiny = estimate_study(StudyConfig.preset("tiny"))
    assert 0.9e9 < tiny.feature_bytes < 1.3e9  # the default study's cache held 1.11 GB of feature shards


def test_an_external_backbone_is_counted_by_a_fake_forward(tmp_path) -> None:
    """A tiny DiT in a study: its extraction is its forward's FLOPs counted on a real clip, its cache the bytes of
    its blocks' real shapes; a backbone whose folder is missing is listed with the reason."""
    from hf_models_dit import save_tiny_dit

    from diffprobe.backbones.registry import block_shapes, load_backbone

    folder = save_tiny_dit(tmp_path / "dit")
    base = StudyConfig.preset("tiny").replace(
        backbones={"a": "pixels@patch=8,tubelet=2"}, reference=("a", "a"), control="", tasks=("action",),
        sweep_tasks=(), noise_sweep=(), block_sweep=(), budget_steps=(), sizes={})
    cfg = base.replace(backbones={"a": "pixels@patch=8,tubelet=2", "dit": f"dit:{folder}"},
                       headline={"dit": (2, 200.0)})
    without, full = estimate_study(base), estimate_study(cfg)
    assert full.uncounted == ()
    dit = load_backbone(f"dit:{folder}", torch.device("cpu")).backbone
    clips = sum(cfg.probe_clips.values())
    with FlopCounterMode(display=False) as counter:  # one real clip's forward to block 2
        dit.features(torch.full((1, 9, 32, 32, 3), 128, dtype=torch.uint8), torch.arange(1), [2], 200.0, 0)
    extract = {s.name: s for s in full.stages}["extract"].flops - {s.name: s for s in without.stages}["extract"].flops
    assert extract == pytest.approx(clips * counter.get_total_flops(), rel=1e-9) and extract > 0
    shape = block_shapes(dit, 9, 32, 32)[2]
    assert full.feature_bytes - without.feature_bytes == clips * math.prod(shape) * 2
    missing = estimate_study(cfg.replace(backbones={"a": "pixels@patch=8,tubelet=2", "dit": f"dit:{tmp_path}/no"}))
    assert len(missing.uncounted) == 1 and missing.uncounted[0].startswith(f"dit:{tmp_path}/no (")


def test_streaming_counts_each_bank_s_reads_by_hand() -> None:
    """Streamed, each seed's training stream reads the train role every epoch, validation and test once a pass."""
    cfg = StudyConfig.preset("tiny").replace(
        backbones={"a": "pixels@patch=8,tubelet=2"}, reference=("a", "a"), control="", tasks=("action", "image_cls"),
        sweep_tasks=(), noise_sweep=(), block_sweep=(), budget_steps=(), sizes={}, probe_seeds=(0, 1))
    jobs = plan_jobs(cfg, Path("runs/estimate"))
    n, p = cfg.probe_clips, cfg.probe
    epochs = -(-p.steps * p.batch_size // n["train"])
    per_task = 2 * epochs * n["train"] + (p.steps // p.eval_every) * n["val"] + n["test"]
    assert _streamed_clips(cfg, jobs) == {("a", cfg.backbone_spec("a"), 0.0, 0, "clip"): per_task,
                                          ("a", cfg.backbone_spec("a"), 0.0, 0, "frame0"): per_task}


def test_the_estimate_says_whether_the_cache_fits(monkeypatch) -> None:
    from diffprobe.study import estimate

    cost = StudyCost((StageCost("extract", 6e12, 10, ""),), (), feature_bytes=5e9, stream_flops=3e13,
                     cached_forward_flops=6e12)
    monkeypatch.setattr(estimate, "free_bytes", lambda path: 4e9)
    text = estimate.format_estimate(cost, 1e12, 0.5, 0.0, 1, "given", Path("c"))
    assert "5 GB of features" in text and "4 GB free at c: does NOT fit" in text
    assert "take 0.030 PFLOP (1.0 min), against 0.006 PFLOP (0.2 min) extracted once" in text
    monkeypatch.setattr(estimate, "free_bytes", lambda path: 6e9)
    assert "6 GB free at c: fits" in estimate.format_estimate(cost, 1e12, 0.5, 0.0, 1, "given", Path("c"))
