"""Tests for the streaming Wan2.1 VAE decoder.

Tolerance: every comparison is fp32 on outputs clamped to [-1, 1]. The paths
being compared are the same maths with different temporal chunking (and the
reference below builds its convs differently), so the only differences are
summation order inside the conv kernels: observed ~1e-6, checked at 2e-5.
"""

import re

import pytest
import torch
import torch.nn.functional as F

from dysink_deploy.models.vae import (
    CACHE_FRAMES,
    VAE_PRESETS,
    VAEConfig,
    WanVAEDecoder,
    decoder_state_dict_from_wan,
)

ATOL = 2e-5
H, W = 8, 8


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights everywhere (Wan zero-initialises attention.proj)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = WanVAEDecoder("tiny").eval()
    _randomise(model)
    return model


@pytest.fixture(scope="module")
def latents():
    return torch.randn(1, 16, 12, H, W, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def full_decode(tiny, latents):
    with torch.no_grad():
        return tiny.decode(latents)


# --------------------------------------------------------------------------- streaming


def test_streaming_blocks_equal_full_decode(tiny, latents, full_decode):
    cache = tiny.init_cache(1, H, W)
    outs = []
    with torch.no_grad():
        for i in range(4):
            out, cache = tiny.decode_block(latents[:, :, 3 * i : 3 * i + 3], cache, first=(i == 0))
            outs.append(out)
    assert [o.shape[2] for o in outs] == [9, 12, 12, 12]
    streamed = torch.cat(outs, dim=2)
    assert streamed.shape == full_decode.shape == (1, 3, 45, 8 * H, 8 * W)
    # Guard against a vacuous comparison: outputs must not be saturated by the clamp.
    assert (full_decode.abs() < 1).float().mean() > 0.5 and full_decode.std() > 0.1
    torch.testing.assert_close(streamed, full_decode, atol=ATOL, rtol=0)


def test_cache_carries_history(tiny, latents, full_decode):
    """Continuing with a fresh cache must differ: the test above can fail."""
    with torch.no_grad():
        _, cache = tiny.decode_block(latents[:, :, :3], tiny.init_cache(1, H, W), first=True)
        good, _ = tiny.decode_block(latents[:, :, 3:6], cache, first=False)
        bad, _ = tiny.decode_block(latents[:, :, 3:6], tiny.init_cache(1, H, W), first=False)
    torch.testing.assert_close(good, full_decode[:, :, 9:21], atol=ATOL, rtol=0)
    assert (bad - good).abs().max() > 1e-2


def test_first_block_alone_is_causal_prefix(tiny, latents, full_decode):
    with torch.no_grad():
        frames, _ = tiny.decode_block(latents[:, :, :3], tiny.init_cache(1, H, W), first=True)
    assert frames.shape == (1, 3, 9, 8 * H, 8 * W)
    torch.testing.assert_close(frames, full_decode[:, :, :9], atol=ATOL, rtol=0)


def test_first_ignores_incoming_cache(tiny, latents):
    noisy = [torch.randn(s) for s in tiny.cache_shapes(1, H, W)]
    with torch.no_grad():
        a, _ = tiny.decode_block(latents[:, :, :2], noisy, first=True)
        b, _ = tiny.decode_block(latents[:, :, :2], tiny.init_cache(1, H, W), first=True)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("t", [1, 3])
def test_frames_layout_is_the_same_function(tiny, latents, t):
    """layout="frames" ([B, T, C, H, W] inside, one Conv2d per temporal tap) gives the reference's frames
    and caches up to summation order: at a video start and mid-stream, batch 2 included."""
    z = torch.cat([latents, latents.flip(2)])
    cache_c = cache_f = None
    with torch.no_grad():
        for i in range(3):
            zb = z[:, :, i * t:(i + 1) * t]
            a, cache_c = tiny.decode_block(zb, cache_c, first=(i == 0))
            b, cache_f = tiny.decode_block(zb, cache_f, first=(i == 0), layout="frames")
            torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
            assert [c.shape for c in cache_f] == [c.shape for c in cache_c]
            for f, c in zip(cache_f, cache_c):   # histories are not clamped: relative to their scale
                torch.testing.assert_close(f, c, atol=ATOL * max(1.0, c.abs().max().item()), rtol=0)
    with pytest.raises(ValueError, match="layout must be one of"):
        tiny.decode_block(z[:, :, :1], None, first=True, layout="rows")


@pytest.mark.parametrize("t,first,t_out", [(1, True, 1), (1, False, 4), (2, True, 5), (2, False, 8), (3, False, 12)])
def test_output_shapes(tiny, t, first, t_out):
    z = torch.randn(2, 16, t, 2, 3)
    with torch.no_grad():
        frames, _ = tiny.decode_block(z, tiny.init_cache(2, 2, 3), first=first)
    assert frames.shape == (2, 3, t_out, 16, 24)
    assert frames.dtype == torch.float32
    assert frames.abs().max() <= 1.0
    assert tiny.num_output_frames(t, first) == t_out


def test_cache_shapes_fixed_and_inputs_untouched(tiny, latents):
    shapes = tiny.cache_shapes(1, H, W)
    cache = tiny.init_cache(1, H, W)
    assert [tuple(c.shape) for c in cache] == shapes
    assert all(c.dtype == torch.float32 and not c.any() for c in cache)
    # tiny: conv1 + 2 middle blocks x2 + 4 stages x 2 blocks x2 + 2 time convs + head.
    assert len(shapes) == 1 + 4 + 16 + 2 + 1
    assert shapes[0] == (1, 16, CACHE_FRAMES, H, W) and shapes[-1] == (1, 8, CACHE_FRAMES, 8 * H, 8 * W)
    with torch.no_grad():
        for i, t in enumerate([1, 3, 1]):
            before = [c.clone() for c in cache]
            z = latents[:, :, :t].clone()
            _, new = tiny.decode_block(z, cache, first=(i == 0))
            assert [tuple(c.shape) for c in new] == shapes
            assert all(torch.equal(a, b) for a, b in zip(before, cache))
            assert torch.equal(z, latents[:, :, :t])
            cache = new
    with pytest.raises(ValueError, match="cache"):
        tiny.decode_block(latents[:, :, :1], cache[:-1], first=False)


# ------------------------------------------------- independent reference (Wan semantics)


def _reference_decode(sd: dict, cfg: VAEConfig, z: torch.Tensor) -> torch.Tensor:
    """Wan-style decode straight from a state dict, written without the module.

    One latent frame per step; per-conv histories live in a dict that starts
    empty (= zero padding). A temporal upsample conv seen for the first time
    passes its frame through and records the marker "fresh"; the next frame
    is convolved against zeros. The block list is discovered from the keys.
    """
    hist: dict = {}

    def norm(x, key):
        return F.normalize(x, dim=1) * x.shape[1] ** 0.5 * sd[key + ".gamma"]

    def cconv(x, key, name):
        w = sd[key + ".weight"]
        past = hist.get(name)
        if past is None or isinstance(past, str):
            past = x.new_zeros(x.shape[0], x.shape[1], 0, *x.shape[3:])
        seq = torch.cat([past, x], 2)
        hist[name] = seq[:, :, -2:]
        seq = F.pad(seq, (0, 0, 0, 0, 2 - past.shape[2], 0))
        return F.conv3d(seq, w, sd[key + ".bias"], padding=(0, w.shape[3] // 2, w.shape[4] // 2))

    def frames2d(x, fn):
        b, t = x.shape[0], x.shape[2]
        y = fn(x.transpose(1, 2).flatten(0, 1))
        return y.unflatten(0, (b, t)).transpose(1, 2)

    def resblock(x, key):
        h = cconv(F.silu(norm(x, key + ".residual.0")), key + ".residual.2", key + "a")
        h = cconv(F.silu(norm(h, key + ".residual.3")), key + ".residual.6", key + "b")
        if key + ".shortcut.weight" in sd:
            x = F.conv3d(x, sd[key + ".shortcut.weight"], sd[key + ".shortcut.bias"])
        return x + h

    def attention(x, key):
        def per_frame(f):
            n, c, hh, ww = f.shape
            qkv = F.conv2d(norm(f, key + ".norm"), sd[key + ".to_qkv.weight"], sd[key + ".to_qkv.bias"])
            q, k, v = qkv.flatten(2).transpose(1, 2).split(c, dim=2)
            y = torch.softmax(q @ k.transpose(1, 2) / c**0.5, dim=-1) @ v
            y = y.transpose(1, 2).reshape(n, c, hh, ww)
            return F.conv2d(y, sd[key + ".proj.weight"], sd[key + ".proj.bias"])

        return x + frames2d(x, per_frame)

    def upsample(x, key):
        if key + ".time_conv.weight" in sd:
            if key not in hist:
                hist[key] = "fresh"
            else:
                y = cconv(x, key + ".time_conv", key)
                c = y.shape[1] // 2
                x = torch.stack([y[:, :c], y[:, c:]], dim=3).flatten(2, 3)
        conv = lambda f: F.conv2d(
            f.repeat_interleave(2, 2).repeat_interleave(2, 3), sd[key + ".resample.1.weight"], sd[key + ".resample.1.bias"], padding=1
        )
        return frames2d(x, conv)

    blocks = [f"decoder.middle.{i}" for i in range(3)]
    n_up = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"decoder\.upsamples\.(\d+)\.", k)))
    blocks += [f"decoder.upsamples.{i}" for i in range(n_up)]

    mean = torch.tensor(cfg.latent_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latent_std).view(1, -1, 1, 1, 1)
    x_all = F.conv3d(z * std + mean, sd["conv2.weight"], sd["conv2.bias"])
    outs = []
    for i in range(z.shape[2]):
        x = cconv(x_all[:, :, i : i + 1], "decoder.conv1", "conv1")
        for key in blocks:
            if key + ".residual.0.gamma" in sd:
                x = resblock(x, key)
            elif key + ".to_qkv.weight" in sd:
                x = attention(x, key)
            else:
                x = upsample(x, key)
        x = cconv(F.silu(norm(x, "decoder.head.0")), "decoder.head.2", "head")
        outs.append(x)
    return torch.cat(outs, 2).clamp(-1, 1)


def test_matches_independent_reference(tiny, latents, full_decode):
    # 5 latent frames cover the first-frame rule, the zero-history step after
    # it and steady state; by causality they are a prefix of the 12-frame decode.
    sd = {k: v.detach() for k, v in tiny.state_dict().items()}
    with torch.no_grad():
        ref = _reference_decode(sd, tiny.config, latents[:, :, :5])
    assert ref.shape[2] == 17
    torch.testing.assert_close(full_decode[:, :, :17], ref, atol=ATOL, rtol=0)


# ----------------------------------------------------------- full-size layout (meta)

WAN21_DECODER_TENSORS = 108
WAN21_DECODER_PARAMS = 73_295_603


def _expected_wan21_layout() -> dict:
    """Decoder-side keys of Wan2.1_VAE.pth as laid out by Wan's Decoder3d."""
    exp = {"conv2.weight": (16, 16, 1, 1, 1), "conv2.bias": (16,)}
    exp["decoder.conv1.weight"], exp["decoder.conv1.bias"] = (384, 16, 3, 3, 3), (384,)

    def res(key, i, o):
        exp[f"{key}.residual.0.gamma"] = (i, 1, 1, 1)
        exp[f"{key}.residual.2.weight"], exp[f"{key}.residual.2.bias"] = (o, i, 3, 3, 3), (o,)
        exp[f"{key}.residual.3.gamma"] = (o, 1, 1, 1)
        exp[f"{key}.residual.6.weight"], exp[f"{key}.residual.6.bias"] = (o, o, 3, 3, 3), (o,)
        if i != o:
            exp[f"{key}.shortcut.weight"], exp[f"{key}.shortcut.bias"] = (o, i, 1, 1, 1), (o,)

    res("decoder.middle.0", 384, 384)
    exp["decoder.middle.1.norm.gamma"] = (384, 1, 1)
    exp["decoder.middle.1.to_qkv.weight"], exp["decoder.middle.1.to_qkv.bias"] = (1152, 384, 1, 1), (1152,)
    exp["decoder.middle.1.proj.weight"], exp["decoder.middle.1.proj.bias"] = (384, 384, 1, 1), (384,)
    res("decoder.middle.2", 384, 384)
    # (stage in, stage out, temporal upsample after the stage); None = last stage.
    stages = [(384, 384, True), (192, 384, True), (192, 192, False), (96, 96, None)]
    idx = 0
    for i, o, temporal in stages:
        for r in range(3):
            res(f"decoder.upsamples.{idx}", i if r == 0 else o, o)
            idx += 1
        if temporal is not None:
            k = f"decoder.upsamples.{idx}"
            exp[f"{k}.resample.1.weight"], exp[f"{k}.resample.1.bias"] = (o // 2, o, 3, 3), (o // 2,)
            if temporal:
                exp[f"{k}.time_conv.weight"], exp[f"{k}.time_conv.bias"] = (2 * o, o, 3, 1, 1), (2 * o,)
            idx += 1
    exp["decoder.head.0.gamma"] = (96, 1, 1, 1)
    exp["decoder.head.2.weight"], exp["decoder.head.2.bias"] = (3, 96, 3, 3, 3), (3,)
    return exp


def test_full_size_state_dict_layout_on_meta():
    with torch.device("meta"):
        model = WanVAEDecoder("wan2.1")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(got) == WAN21_DECODER_TENSORS
    assert sum(v.numel() for v in model.state_dict().values()) == WAN21_DECODER_PARAMS
    assert got == _expected_wan21_layout()
    spot = {
        "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
        "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
        "decoder.middle.1.norm.gamma": (384, 1, 1),
        "decoder.head.2.weight": (3, 96, 3, 3, 3),
    }
    assert {k: got[k] for k in spot} == spot
    # A Wan checkpoint also holds encoder.* and conv1.*; the filter keeps exactly ours.
    full = {**model.state_dict(), "encoder.conv1.weight": None, "conv1.weight": None}
    assert set(decoder_state_dict_from_wan(full)) == set(got)
    shapes = model.cache_shapes(1, 60, 104)
    assert len(shapes) == 32
    assert shapes[0] == (1, 16, 2, 60, 104) and shapes[-1] == (1, 96, 2, 480, 832)


# ------------------------------------------------------------------------ config


def test_presets():
    wan, tiny = VAE_PRESETS["wan2.1"], VAE_PRESETS["tiny"]
    assert wan.temporal_upsample == (True, True, False) and wan.dim == 96
    for cfg in (wan, tiny):
        assert (cfg.temporal_stride, cfg.spatial_stride, cfg.z_dim) == (4, 8, 16)
    assert wan.latent_mean[0] == -0.7571 and wan.latent_std[-1] == 1.9160


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"dim_mult": ()}, "dim_mult"),
        ({"dim": -8}, "dim"),
        ({"z_dim": 0}, "z_dim"),
        ({"num_res_blocks": -1}, "num_res_blocks"),
        ({"temporal_upsample": (True, False)}, "temporal_upsample"),
        ({"temporal_upsample": (1, 1, 0)}, "temporal_upsample"),
        ({"latent_mean": (0.0,) * 15}, "latent_mean"),
        ({"latent_std": (1.0,) * 17}, "latent_std"),
        ({"latent_std": (0.0,) * 16}, "latent_std"),
        ({"dim_mult": 4}, "dim_mult"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        VAEConfig(**kwargs)


def test_config_accepts_lists_and_is_hashable():
    cfg = VAEConfig(dim=8, dim_mult=[1, 2], temporal_upsample=[True])
    assert cfg.dim_mult == (1, 2) and hash(cfg) == hash(VAEConfig(dim=8, dim_mult=(1, 2), temporal_upsample=(True,)))
