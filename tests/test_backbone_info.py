"""``diffprobe backbone info``: block shapes on fake tensors (equal to a real forward's, with no real compute), the
fallback for a kind that cannot run fake, and ``--estimate``'s numbers against hand-computed ones."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fixtures_runs import tiny_runs
from torch._subclasses.fake_tensor import FakeTensor

from diffprobe.backbones.base import Backbone
from diffprobe.backbones.cli import human_bytes
from diffprobe.backbones.registry import block_shapes, load_backbone
from diffprobe.backbones.shapes import estimate, forward_shapes
from diffprobe.cli import main
from diffprobe.features.extract import EXTRACT_BATCH, FEATURE_DTYPE
from diffprobe.models.embeddings import _sincos_table

CPU = torch.device("cpu")


def _real_shapes(backbone: Backbone, frames: int) -> dict[int, tuple[int, ...]]:
    video = torch.randint(0, 256, (1, frames, 32, 32, 3), dtype=torch.uint8)
    blocks = list(range(backbone.num_blocks + 1))
    return {b: tuple(f.shape[1:]) for b, f in backbone.features(video, torch.zeros(1, dtype=torch.long), blocks,
                                                                  0.0, 0).items()}


def _fake_only(module: torch.nn.Module, frames: int, backbone: Backbone) -> list[bool]:
    """Whether each output ``module`` gave during ``forward_shapes`` was a fake tensor (no real compute)."""
    seen: list[bool] = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(isinstance(o, FakeTensor)))
    try:
        fwd = forward_shapes(backbone, frames, 32, 32)
    finally:
        handle.remove()
    assert fwd.fake
    return seen


@pytest.fixture(scope="module")
def walt(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    return load_backbone(f"walt:{tiny_runs(tmp_path_factory.getbasetemp()).video}", CPU).backbone


def test_walt_fake_shapes_equal_the_real_forward_and_compute_nothing(walt) -> None:
    assert block_shapes(walt, 9, 32, 32) == _real_shapes(walt, 9)
    assert block_shapes(walt, 5, 32, 32) == _real_shapes(walt, 5)
    layer = next(m for m in walt.denoiser.modules() if isinstance(m, torch.nn.Linear))
    seen = _fake_only(layer, 9, walt)
    assert seen and all(seen)  # the layer ran, on fake tensors only
    seen_real: list[bool] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen_real.append(isinstance(o, FakeTensor)))
    _real_shapes(walt, 9)
    handle.remove()
    assert seen_real and not any(seen_real)  # the hook can tell a real forward


def test_a_table_first_made_under_fake_tensors_is_cached_real() -> None:
    """A cache filled during a shapes-only forward must not hand fake tensors to the real forwards after it."""
    from diffprobe.backbones.shapes import _LiveBytes

    _sincos_table.cache_clear()
    with _LiveBytes():
        _sincos_table(2, 3, 3, 8, CPU, torch.float32)
    table = _sincos_table(2, 3, 3, 8, CPU, torch.float32)
    assert not isinstance(table, FakeTensor) and table.shape == (2, 3, 3, 8) and torch.isfinite(table).all()


def test_sd_fake_shapes_equal_the_real_forward_and_compute_nothing(tmp_path_factory) -> None:
    pytest.importorskip("diffusers")
    from hf_models_unet import save_tiny_sd

    bb = load_backbone(f"sd:{save_tiny_sd(tmp_path_factory.mktemp('sd') / 'tiny-sd')}", CPU).backbone
    assert block_shapes(bb, 9, 32, 32) == _real_shapes(bb, 9) == {
        0: (9, 8, 8, 4), 1: (9, 4, 4, 32), 2: (9, 4, 4, 64), 3: (9, 4, 4, 64), 4: (9, 8, 8, 64), 5: (9, 8, 8, 32)}
    seen = _fake_only(bb.unet.conv_in, 9, bb)
    assert seen and all(seen)
    # a batch larger than the kind's sub-batch still runs fake (the clip ids are sliced for real)
    assert forward_shapes(bb, 3, 32, 32, batch=2 * bb.batch_size + 1).fake


class _ReadsValues(Backbone):
    """A kind whose forward reads a value out of a tensor: it cannot run on fake tensors."""

    num_blocks, identity, device = 0, "reads-values", CPU

    def features(self, video: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                 noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        scale = float(video.float().mean())  # data-dependent
        return {0: video.float()[:, ::2, ::4, ::4] * scale}  # (B, T/2, H/4, W/4, 3)


def test_a_kind_that_cannot_run_fake_falls_back_to_a_real_forward_said_once() -> None:
    bb = _ReadsValues()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = forward_shapes(bb, 9, 32, 32, batch=4)
        again = forward_shapes(bb, 9, 32, 32)
    assert first.shapes == again.shapes == {0: (5, 8, 8, 3)} and not first.fake and first.peak_activation_bytes is None
    assert [str(w.message) for w in caught if "cannot run on fake tensors" in str(w.message)].__len__() == 1
    est = estimate(bb, 9, 32, 32, batch=4, feature_dtype=torch.float16)
    assert est.activation_bytes == 4 * 5 * 8 * 8 * 3 * 4  # the lower bound: the batch's block outputs in fp32


def test_pixels_estimate_by_hand() -> None:
    bb = load_backbone("pixels@patch=8,tubelet=2", CPU).backbone
    est = estimate(bb, 9, 32, 32, batch=3, feature_dtype=torch.float16, clips=1000)
    per_clip = 5 * 4 * 4 * (2 * 8 * 8 * 3) * 2  # T_f * H_f * W_f * C * fp16
    assert est.forward.fake and est.parameters == 0 and est.weight_bytes == 0
    assert est.feature_bytes == {0: per_clip} and est.cache_bytes(0) == 1000 * per_clip
    # at least the input (uint8) and the returned tokens (fp32) are alive at once
    assert est.activation_bytes >= 3 * (9 * 32 * 32 * 3 + 5 * 4 * 4 * 384 * 4)
    result = CliRunner().invoke(main, ["backbone", "info", "pixels@patch=8,tubelet=2", "--estimate", "--clips",
                                       "1000", "--batch", "3"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.split()[:1] == ["0"])
    assert row.split() == ["0", "5", "x", "4", "x", "4", "384", *human_bytes(per_clip).split(),
                           *human_bytes(1000 * per_clip).split()]
    assert human_bytes(per_clip) == "61.4 kB" and "0 parameters" in result.output and "fake tensors" in result.output
    assert human_bytes(est.activation_bytes) in result.output
    pooled = CliRunner().invoke(main, ["backbone", "info", "pixels@patch=8,tubelet=2", "--estimate", "--clips",
                                       "1000", "--pool", "1x2x2"])
    row = next(line for line in pooled.output.splitlines() if line.split()[:1] == ["0"])
    per_pooled = 1 * 2 * 2 * 384 * 2  # the cache holds the pooled grid: 1 x 2 x 2 tokens
    assert pooled.exit_code == 0 and "pooled to 1x2x2" in pooled.output
    assert row.split()[-4:] == [*human_bytes(per_pooled).split(), *human_bytes(1000 * per_pooled).split()]


def test_walt_estimate_by_hand(walt, tmp_path_factory) -> None:
    est = estimate(walt, 9, 32, 32, batch=2, feature_dtype=FEATURE_DTYPE, clips=10)
    params = [*walt.denoiser.parameters(), *walt.encoder.tokenizer.parameters()]
    assert est.parameters == sum(p.numel() for p in params)
    assert est.weight_bytes == 4 * est.parameters and est.weight_dtypes == ("float32",)
    per_clip = 5 * 4 * 4 * 128 * 2  # T_f * H_f * W_f * C * fp16
    assert est.feature_bytes == dict.fromkeys(range(7), per_clip) and est.cache_bytes(3) == 10 * per_clip
    # every block's fp32 output is returned, so alive at the end: the peak is at least their sum
    assert est.activation_bytes >= 2 * 7 * 5 * 4 * 4 * 128 * 4
    spec = f"walt:{tiny_runs(tmp_path_factory.getbasetemp()).video}"
    result = CliRunner().invoke(main, ["backbone", "info", spec, "--estimate"])
    assert result.exit_code == 0, result.output
    assert f"{est.parameters:,} parameters in float32" in result.output
    assert human_bytes(est.weight_bytes) in result.output and f"forward of {EXTRACT_BATCH} clip(s)" in result.output
    assert result.output.count(human_bytes(per_clip)) == 7 and "all" in result.output
    assert human_bytes(7 * per_clip) in result.output


def test_info_without_estimate_and_mistakes(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["backbone", "info", "pixels@patch=8,tubelet=2"])
    assert result.exit_code == 0 and "block   0  tokens   5 x   4 x   4  channels 384" in result.output
    assert "weights" not in result.output
    result = CliRunner().invoke(main, ["backbone", "info", "pixels", "--clips", "10"])
    assert result.exit_code == 2 and "Error: --batch, --clips and --pool go with --estimate" in result.output
    result = CliRunner().invoke(main, ["backbone", "info", "pixels@patch=5", "--estimate"])
    assert result.exit_code == 2 and "5x5 px patches" in result.output  # a user's mistake is raised, not a fallback


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 999, 1000, 61440, 1.5e9, 2e15)] == ["0 B", "999 B", "1 kB", "61.4 kB",
                                                                          "1.5 GB", "2000 TB"]
    assert math.isclose(1.5e9, float(human_bytes(1.5e9).split()[0]) * 1e9)


def test_peak_memory_is_baseline_plus_weights_plus_activations(walt, tmp_path_factory) -> None:
    from diffprobe.backbones.shapes import import_libraries, resident_bytes

    est = estimate(walt, 9, 32, 32, batch=2, feature_dtype=FEATURE_DTYPE, baseline=123_000_000)
    assert est.baseline == 123_000_000
    assert est.peak_bytes == 123_000_000 + est.weight_bytes + est.activation_bytes
    assert estimate(walt, 9, 32, 32, batch=2, feature_dtype=FEATURE_DTYPE).peak_bytes == (
        est.weight_bytes + est.activation_bytes)  # no baseline given: none counted
    import_libraries()
    now = resident_bytes()
    assert 50e6 < now < 20e9  # this process (torch imported) holds tens of MB at least, and less than the machine
    spec = f"walt:{tiny_runs(tmp_path_factory.getbasetemp()).video}"
    result = CliRunner().invoke(main, ["backbone", "info", spec, "--estimate"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.strip().startswith("peak memory"))
    value, unit = line.split()[2:4]
    peak = float(value) * {"MB": 1e6, "GB": 1e9}[unit]
    # the printed peak is this process's baseline (read before the load) + weights + activations
    assert 0.5 * now + est.weight_bytes < peak < 2 * now + est.weight_bytes + 4 * est.activation_bytes
