"""The WALT denoiser: window attention, image/video modes, per-frame t, block taps, zero init, sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from diffprobe.config import ConfigError
from diffprobe.models import WALT, WALTConfig
from diffprobe.models.attention import WindowAttention
from diffprobe.models.walt import AdaLNModulation


def _randomize_zero_init(model: WALT, seed: int = 0) -> WALT:
    """Give the zero-initialised adaLN and output layers random weights, as training would, so outputs are nonzero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AdaLNModulation):
                m.net[-1].weight.copy_(torch.randn(m.net[-1].weight.shape, generator=g) * 0.05)
        model.final.linear.weight.copy_(torch.randn(model.final.linear.weight.shape, generator=g) * 0.05)
    return model


def _model(seed: int = 0, **overrides: object) -> WALT:
    torch.manual_seed(seed)
    cfg = WALTConfig.preset("tiny").replace(**overrides)
    return _randomize_zero_init(WALT(cfg).eval(), seed)


def _latents(b: int = 2, t: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn((b, 8, t, 8, 8), generator=torch.Generator().manual_seed(seed))  # (B, C, T', H', W')


@pytest.mark.parametrize(("grid", "window"), [((4, 4, 4), (2, 2, 2)), ((4, 4, 4), (1, 2, 4)), ((1, 2, 2), (5, 4, 4))])
def test_window_attention_equals_masked_full_attention(grid: tuple[int, int, int],
                                                       window: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    dim, heads = 16, 2
    attn = WindowAttention(dim, heads, window)
    x = torch.randn(2, *grid, dim)  # (B, T, H, W, D)
    with torch.no_grad():
        out = attn(x)
        # reference: every token attends to the whole sequence, masked to its own window
        wt, wh, ww = (min(w, g) for w, g in zip(window, grid, strict=True))
        ti, hi, wi = torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij")
        wid = ((ti // wt) * 1000 + (hi // wh) * 100 + (wi // ww)).flatten()  # (N,) window id per token
        mask = wid[:, None] == wid[None, :]  # (N, N) block-diagonal
        q, k, v = rearrange(attn.qkv(x), "b t h w (k n d) -> k b n (t h w) d", k=3, n=heads).unbind(0)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, N, d)
        ref = attn.proj(rearrange(ref, "b n (t h w) d -> b t h w (n d)", t=grid[0], h=grid[1]))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_window_not_dividing_grid_is_an_error() -> None:
    attn = WindowAttention(16, 2, (2, 2, 2))
    with pytest.raises(ValueError, match=r"\(3, 4, 4\).*not divisible"):
        attn(torch.zeros(1, 3, 4, 4, 16))
    model = WALT(WALTConfig.preset("tiny"))
    with pytest.raises(ValueError, match=r"\(5, 6, 6\)"):  # 12x12 latents -> 6x6 tokens; spatial window 4x4
        model(torch.zeros(1, 8, 5, 12, 12), torch.zeros(1))


def test_image_and_video_share_parameters() -> None:
    model = _model()
    n_params = sum(p.numel() for p in model.parameters())
    for frames in (1, 5):
        model.zero_grad()
        out = model(_latents(t=frames), torch.full((2,), 300.0))
        assert out.shape == (2, 8, frames, 8, 8)
        out.square().mean().backward()
        # every block (spatial and spatiotemporal alike) is used in both modes
        for block in model.blocks:
            assert block.attn.qkv.weight.grad.abs().sum() > 0
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_image_mode_matches_frame_zero_without_temporal_mixing() -> None:
    # with 1-frame spatiotemporal windows no token sees another frame, so frame 0 of a clip is processed exactly
    # as the same frame given alone (an image): same weights, same position code for frame 0.
    for pos in ("sinusoidal", "learned"):
        model = _model(spatiotemporal_window=[1, 2, 2], pos_embed=pos)
        x = _latents()
        t = torch.tensor([100.0, 700.0])
        with torch.no_grad():
            video = model(x, t)
            image = model(x[:, :, :1], t)
        torch.testing.assert_close(image[:, :, 0], video[:, :, 0], atol=1e-5, rtol=1e-5)


def test_per_frame_t() -> None:
    model = _model()
    x = _latents()
    with torch.no_grad():
        scalar = model(x, torch.tensor([250.0, 600.0]))
        per_frame = model(x, torch.tensor([[250.0] * 5, [600.0] * 5]))
    torch.testing.assert_close(per_frame, scalar, atol=1e-6, rtol=1e-6)
    # each frame is conditioned by its own t: with no temporal mixing only frame 3 changes when its t does
    model = _model(spatiotemporal_window=[1, 2, 2])
    t = torch.full((2, 5), 250.0)
    t2 = t.clone()
    t2[:, 3] = 900.0
    with torch.no_grad():
        a, b = model(x, t), model(x, t2)
    changed = (a - b).abs().amax(dim=(0, 1, 3, 4))  # (T',)
    assert changed[3] > 1e-3
    assert torch.equal(changed[[0, 1, 2, 4]], torch.zeros(4))
    with pytest.raises(ValueError, match=r"t must have shape"):
        model(x, torch.zeros(2, 4))


def test_block_taps_stop_early() -> None:
    model = _model()
    x, t = _latents(), torch.tensor([200.0, 200.0])
    calls: list[str] = []
    for i, block in enumerate(model.blocks, start=1):
        block.register_forward_hook(lambda *_, i=i: calls.append(f"block{i}"))
    model.final.register_forward_hook(lambda *_: calls.append("final"))
    with torch.no_grad():
        everything = model(x, t, blocks=list(range(7)))
        assert calls == [f"block{i}" for i in range(1, 7)]
        calls.clear()
        two = model(x, t, blocks=[2])
        assert calls == ["block1", "block2"]
        calls.clear()
        zero = model(x, t, blocks=[0])
        assert calls == []
    assert list(two) == [2]
    assert two[2].shape == (2, 5, 4, 4, 128)
    torch.testing.assert_close(two[2], everything[2], atol=0, rtol=0)
    torch.testing.assert_close(zero[0], everything[0], atol=0, rtol=0)
    with torch.no_grad():
        full = model(x, t)
        # the prediction is the final layer applied to the block-6 grid
        final = model.final(everything[6], model._conditioning(t, None, 2, 5))
    torch.testing.assert_close(full, rearrange(final, "b t h w (p1 p2 c) -> b c t (h p1) (w p2)", p1=2, p2=2))
    with pytest.raises(ValueError, match="blocks"):
        model(x, t, blocks=[7])


def test_zero_init_output_and_identity_blocks() -> None:
    torch.manual_seed(0)
    model = WALT(WALTConfig.preset("tiny"))
    x, t = _latents(), torch.tensor([10.0, 900.0])
    with torch.no_grad():
        out = model(x, t)
        taps = model(x, t, blocks=[0, 3, 6])
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(x))
    # adaLN-Zero: all gates are 0, so every block starts as the identity
    assert torch.equal(taps[3], taps[0]) and torch.equal(taps[6], taps[0])
    # the same holds with AdaLN-LoRA
    lora = WALT(WALTConfig.preset("tiny").replace(adaln_lora_rank=8))
    with torch.no_grad():
        assert torch.equal(lora(x, t), torch.zeros_like(x))


def test_class_conditioning() -> None:
    model = _model(num_classes=3)
    x, t = _latents(), torch.tensor([300.0, 300.0])
    with torch.no_grad():
        a = model(x, t, torch.tensor([0, 0]))
        b = model(x, t, torch.tensor([1, 1]))
        null = model(x, t, torch.tensor([3, 3]))
        none = model(x, t)
    assert (a - b).abs().max() > 1e-4
    assert torch.equal(none, null)
    assert model.null_class == 3
    with pytest.raises(ValueError, match="labels"):
        model(x, t, torch.tensor([4, 0]))
    with pytest.raises(ValueError, match="unconditional"):
        _model()(x, t, torch.tensor([0, 0]))


def _expected_params(cfg: WALTConfig) -> int:
    """Parameter count of a WALT from its config, by hand."""
    d, p, c, r = cfg.hidden_size, cfg.patch_size, cfg.in_channels, cfg.adaln_lora_rank
    h = int(d * cfg.mlp_ratio)
    lin = lambda i, o: i * o + o  # noqa: E731
    block = lin(d, 3 * d) + lin(d, d) + lin(d, h) + lin(h, d)
    block += lin(d, 6 * d) if r == 0 else d * r + lin(r, 6 * d)
    n = cfg.depth * block
    n += lin(p * p * c, d) + lin(256, d) + lin(d, d)  # patch embed, timestep MLP
    n += lin(d, 2 * d) + lin(d, p * p * c)  # final layer
    if r > 0:
        n += lin(d, 6 * d)  # shared AdaLN
    if cfg.num_classes:
        n += (cfg.num_classes + 1) * d
    if cfg.pos_embed == "learned":
        n += cfg.max_latent_frames * d + (cfg.max_latent_size[0] // p) * (cfg.max_latent_size[1] // p) * d
    return n


@pytest.mark.parametrize("name", ["tiny", "S", "B", "L"])
def test_preset_param_counts(name: str) -> None:
    cfg = WALTConfig.preset(name)
    with torch.device("meta"):  # no memory for the large presets
        model = WALT(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == _expected_params(cfg)
    expected_range = {"tiny": (1e6, 2.5e6), "S": (25e6, 40e6), "B": (110e6, 140e6), "L": (280e6, 340e6)}[name]
    assert expected_range[0] < n < expected_range[1], n


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="num_heads"):
        WALTConfig(hidden_size=130, num_heads=4)
    with pytest.raises(ConfigError, match="unknown key"):
        WALTConfig.from_dict({"hiden_size": 64})
    model = _model(pos_embed="learned")
    with pytest.raises(ValueError, match="learned table"):
        model(torch.zeros(1, 8, 10, 8, 8), torch.zeros(1))


def test_learned_pos_embed_is_trained() -> None:
    model = _model(pos_embed="learned")
    model(_latents(), torch.tensor([100.0, 100.0])).square().mean().backward()
    assert model.pos_embed.time.grad.abs().sum() > 0 and model.pos_embed.space.grad.abs().sum() > 0

