import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dysink_deploy.models.pe_core import (
    PE_PRESETS,
    PEConfig,
    PECoreVisionEncoder,
    apply_rope_2d,
    rope_2d_angles,
    vision_state_dict,
)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return PECoreVisionEncoder.from_preset("tiny").eval()


def test_forward_shapes(tiny):
    cfg = PE_PRESETS["tiny"]
    images = torch.randn(3, 3, cfg.image_size, cfg.image_size)
    assert tiny(images).shape == (3, 16)
    # class token + 2x2 patches
    assert tiny.forward_features(images).shape == (3, 5, cfg.width)
    # Off-size inputs resample the absolute position embedding instead of failing.
    assert tiny(torch.randn(2, 3, 48, 64)).shape == (2, 16)


def test_block_feature_unit_norm_and_layouts(tiny):
    torch.manual_seed(1)
    frames = torch.rand(2, 3, 5, 40, 56) * 2 - 1  # B, C, T, H, W; not image_size so it resizes
    feat = tiny.block_feature(frames)
    assert feat.shape == (2, 16)
    torch.testing.assert_close(feat.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(tiny.block_feature(frames.transpose(1, 2), layout="btchw"), feat)


def test_block_feature_matches_dysink_recipe(tiny):
    torch.manual_seed(2)
    frames = torch.rand(1, 3, 4, 24, 40) * 2.4 - 1.2  # out-of-range values get clamped
    x = ((frames.clamp(-1, 1) * 0.5 + 0.5).clamp(0, 1)).permute(0, 2, 1, 3, 4).reshape(4, 3, 24, 40)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) * 2 - 1
    expected = F.normalize(tiny(x).mean(dim=0, keepdim=True), dim=-1)  # mean of raw, then normalise
    torch.testing.assert_close(tiny.block_feature(frames), expected)


def test_block_feature_is_frame_order_invariant(tiny):
    torch.manual_seed(3)
    frames = torch.rand(2, 3, 6, 32, 32) * 2 - 1
    perm = torch.randperm(6)
    torch.testing.assert_close(tiny.block_feature(frames[:, :, perm]), tiny.block_feature(frames))


def _expected_s16_keys():
    keys = ["class_embedding", "positional_embedding", "proj", "conv1.weight",
            "ln_pre.weight", "ln_pre.bias", "ln_post.weight", "ln_post.bias"]
    for i in range(12):
        for name in ("attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                     "attn.out_proj.bias", "ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias",
                     "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"):
            keys.append(f"transformer.resblocks.{i}.{name}")
    keys += ["attn_pool.probe", "attn_pool.attn.in_proj_weight", "attn_pool.attn.in_proj_bias",
             "attn_pool.attn.out_proj.weight", "attn_pool.attn.out_proj.bias",
             "attn_pool.layernorm.weight", "attn_pool.layernorm.bias",
             "attn_pool.mlp.c_fc.weight", "attn_pool.mlp.c_fc.bias",
             "attn_pool.mlp.c_proj.weight", "attn_pool.mlp.c_proj.bias"]
    return keys


def test_s16_384_checkpoint_layout_on_meta():
    with torch.device("meta"):
        model = PECoreVisionEncoder.from_preset("pe-core-s16-384")
    sd = model.state_dict()
    assert sorted(sd) == sorted(_expected_s16_keys())
    assert len(sd) == 163
    assert sum(t.numel() for t in sd.values()) == 23_782_656  # ~23.8M
    shapes = {
        "conv1.weight": (384, 3, 16, 16),
        "class_embedding": (384,),
        "positional_embedding": (577, 384),  # 1 + 24*24
        "proj": (384, 512),
        "transformer.resblocks.11.attn.in_proj_weight": (1152, 384),
        "transformer.resblocks.0.mlp.c_fc.weight": (1536, 384),
        "transformer.resblocks.0.mlp.c_proj.weight": (384, 1536),
        "attn_pool.probe": (1, 1, 384),
        "attn_pool.attn.in_proj_weight": (1152, 384),
        "attn_pool.mlp.c_fc.weight": (1536, 384),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key


def test_layer_scale_adds_gamma_keys():
    cfg = dataclasses.replace(PE_PRESETS["tiny"], ls_init_value=0.1)
    sd = PECoreVisionEncoder(cfg).state_dict()
    assert torch.equal(sd["transformer.resblocks.1.ls_2.gamma"], torch.full((32,), 0.1))
    assert "transformer.resblocks.0.ls_1.gamma" not in PECoreVisionEncoder(PE_PRESETS["tiny"]).state_dict()


def test_vision_state_dict_strips_prefixes(tiny):
    sd = tiny.state_dict()
    full = {f"module.visual.{k}": v for k, v in sd.items()}
    full["module.logit_scale"] = torch.tensor(1.0)
    full["module.text_projection"] = torch.zeros(2, 2)
    stripped = vision_state_dict(full)
    assert set(stripped) == set(sd)
    PECoreVisionEncoder(PE_PRESETS["tiny"]).load_state_dict(stripped, strict=True)


def _rotate(a, b, angle):
    return a * math.cos(angle) - b * math.sin(angle), b * math.cos(angle) + a * math.sin(angle)


def test_rope_hand_computed_case():
    # head_dim 8 -> per axis 2 frequencies: theta**0 = 1 and theta**(-2/4) = 0.01.
    head_dim, grid = 8, 3
    angles = rope_2d_angles(grid, grid, head_dim, use_cls_token=True)
    assert angles.shape == (1 + grid * grid, head_dim)
    vec = torch.arange(1.0, 9.0)
    x = vec.expand(1 + grid * grid, head_dim).clone()
    out = apply_rope_2d(x[None, None], angles)[0, 0]
    torch.testing.assert_close(out[0], vec)  # class token is never rotated
    row, col = 1, 2
    token = 1 + row * grid + col
    pos_r, pos_c = row + 1, col + 1  # the class token owns position 0
    expected = []
    for pair, (freq, pos) in enumerate([(1.0, pos_c), (0.01, pos_c), (1.0, pos_r), (0.01, pos_r)]):
        expected += _rotate(vec[2 * pair].item(), vec[2 * pair + 1].item(), freq * pos)
    torch.testing.assert_close(out[token], torch.tensor(expected))
    # Without a class token positions start at 0, so the top-left patch is untouched.
    plain = rope_2d_angles(grid, grid, head_dim, use_cls_token=False)
    assert plain.shape == (grid * grid, head_dim) and torch.count_nonzero(plain[0]) == 0
    one_step = torch.tensor([1, 1, 0.01, 0.01, 1, 1, 0.01, 0.01])  # angle per unit of position
    torch.testing.assert_close(plain[row * grid + col], angles[token] - one_step)


def test_rope_scores_depend_on_relative_position_only():
    torch.manual_seed(4)
    angles = rope_2d_angles(5, 5, 16, use_cls_token=False)
    q, k = torch.randn(16), torch.randn(16)

    def score(i, j):
        return (apply_rope_2d(q.expand(25, 16), angles)[i] @ apply_rope_2d(k.expand(25, 16), angles)[j])

    # (0,0)->(1,2) and (2,1)->(3,3) share the same offset
    torch.testing.assert_close(score(0, 7), score(11, 18))


def test_attention_pooling_matches_naive_loop(tiny):
    torch.manual_seed(5)
    pool = tiny.attn_pool
    tokens = torch.randn(2, 7, 32)
    dim, heads = 32, 2
    hd = dim // heads
    w, b = pool.attn.in_proj_weight, pool.attn.in_proj_bias
    outs = []
    for n in range(2):
        q = pool.probe[0, 0] @ w[:dim].T + b[:dim]
        k = tokens[n] @ w[dim:2 * dim].T + b[dim:2 * dim]
        v = tokens[n] @ w[2 * dim:].T + b[2 * dim:]
        head_outs = []
        for h in range(heads):
            sl = slice(h * hd, (h + 1) * hd)
            weights = torch.softmax(torch.stack([q[sl] @ k[t, sl] for t in range(7)]) / math.sqrt(hd), dim=0)
            head_outs.append(sum(weights[t] * v[t, sl] for t in range(7)))
        attended = pool.attn.out_proj(torch.cat(head_outs))
        outs.append(attended + pool.mlp(pool.layernorm(attended)))
    with torch.no_grad():
        torch.testing.assert_close(pool(tokens), torch.stack(outs).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("changes, field", [
    ({"heads": 3}, "width"),
    ({"image_size": 40}, "image_size"),
    ({"patch_size": 0}, "patch_size"),
    ({"attn_pooler_heads": 3}, "attn_pooler_heads"),
    ({"pool_type": "max"}, "pool_type"),
    ({"output_dim": -1}, "output_dim"),
    ({"use_cls_token": 1}, "use_cls_token"),
    ({"width": 24, "heads": 4}, "width // heads"),  # head_dim 6: RoPE needs a multiple of 4
    ({"layers": 2.0}, "layers"),
])
def test_config_validation(changes, field):
    with pytest.raises(ValueError, match=field.replace("/", r"\/")):
        dataclasses.replace(PE_PRESETS["tiny"], **changes)


def test_config_from_dict_rejects_unknown_and_missing_fields():
    values = dataclasses.asdict(PE_PRESETS["tiny"])
    assert PEConfig.from_dict(values) == PE_PRESETS["tiny"]
    with pytest.raises(ValueError, match="drop_path"):
        PEConfig.from_dict({**values, "drop_path": 0.1})
    values.pop("heads")
    with pytest.raises(ValueError, match="heads"):
        PEConfig.from_dict(values)
    with pytest.raises(ValueError, match="unknown PE preset"):
        PECoreVisionEncoder.from_preset("pe-core-x")
