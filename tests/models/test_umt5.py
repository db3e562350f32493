"""The umT5 encoder against an independent implementation (Hugging Face transformers'
UMT5EncoderModel at a small config, weights mapped into ours), and the full-size key list."""

from __future__ import annotations

import pytest
import torch

from dysink_deploy.models.umt5 import UMT5Config, UMT5Encoder, relative_position_bucket, text_encoder_preset

CFG = UMT5Config(vocab_size=96, dim=48, dim_attn=32, dim_ffn=80, heads=4, layers=3, text_len=40)


def _hf_pair():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.UMT5Config(vocab_size=CFG.vocab_size, d_model=CFG.dim, d_kv=CFG.dim_attn // CFG.heads,
                                     d_ff=CFG.dim_ffn, num_layers=CFG.layers, num_heads=CFG.heads,
                                     relative_attention_num_buckets=CFG.num_buckets,
                                     relative_attention_max_distance=CFG.max_distance,
                                     feed_forward_proj="gated-gelu", dropout_rate=0.0,
                                     layer_norm_epsilon=CFG.eps)
    torch.manual_seed(0)
    hf = transformers.UMT5EncoderModel(hf_cfg).eval()
    with torch.no_grad():                      # non-trivial norms and position tables
        for name, p in hf.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            if "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))
    ours = UMT5Encoder(CFG).eval()
    src = hf.state_dict()
    mapped = {"token_embedding.weight": src["shared.weight"], "norm.weight": src["encoder.final_layer_norm.weight"]}
    for i in range(CFG.layers):
        pre = f"encoder.block.{i}.layer."
        for ours_name, hf_name in (("norm1", "0.layer_norm"), ("attn.q", "0.SelfAttention.q"),
                                   ("attn.k", "0.SelfAttention.k"), ("attn.v", "0.SelfAttention.v"),
                                   ("attn.o", "0.SelfAttention.o"),
                                   ("pos_embedding.embedding", "0.SelfAttention.relative_attention_bias"),
                                   ("norm2", "1.layer_norm"), ("ffn.gate.0", "1.DenseReluDense.wi_0"),
                                   ("ffn.fc1", "1.DenseReluDense.wi_1"), ("ffn.fc2", "1.DenseReluDense.wo")):
            mapped[f"blocks.{i}.{ours_name}.weight"] = src[pre + hf_name + ".weight"]
    ours.load_state_dict(mapped, strict=True)
    return hf, ours


def test_matches_transformers_umt5():
    hf, ours = _hf_pair()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, CFG.vocab_size, (3, CFG.text_len), generator=g)
    lengths = torch.tensor([CFG.text_len, 17, 1])
    mask = (torch.arange(CFG.text_len)[None] < lengths[:, None]).long()
    ids = ids * mask
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
        # float64 copies: how far fp32 itself is from exact, the tolerance's scale
        ref64 = hf.double()(input_ids=ids, attention_mask=mask).last_hidden_state
    ref = ref * mask[..., None]                 # the pipeline zeroes rows past the prompt
    ref64 = ref64 * mask[..., None]
    base = (ref.double() - ref64).abs().max().item()
    err = (got.double() - ref64).abs().max().item()
    assert base > 0
    assert err <= 4 * base + 1e-6, f"ours {err:.3g} vs transformers fp32 {base:.3g} (both against float64)"
    assert got[1, 17:].abs().max() == 0 and got[2, 1:].abs().max() == 0
    assert got[1, :17].abs().min() > 0


def test_relative_buckets_hand_worked():
    # 32 buckets, bidirectional: 16 per sign; exact below 8; log up to 128; keys after the query
    # (rel > 0) in the upper half. rel 0..7 -> 0..7; rel -3 -> 3; rel 5 -> 16 + 5;
    # rel 8 -> 8 + floor(log(1)/log(16) * 8) = 8; rel 127 -> 8 + floor(log(15.875)/log(16) * 8) = 15;
    # rel 1000 -> capped at 15; rel 20 -> 8 + floor(log(2.5)/log(16) * 8) = 8 + 2 = 10.
    rel = torch.tensor([0, 3, -3, 5, -8, -127, -1000, -20])
    assert relative_position_bucket(rel, 32, 128).tolist() == [0, 19, 3, 21, 8, 15, 15, 10]


def test_full_size_keys_on_meta_device():
    with torch.device("meta"):
        model = UMT5Encoder(text_encoder_preset("umt5-xxl"))
    state = model.state_dict()
    assert len(state) == 1 + 24 * 10 + 1
    assert sum(t.numel() for t in state.values()) == 5_680_910_336
    assert state["token_embedding.weight"].shape == (256384, 4096)
    assert state["blocks.23.pos_embedding.embedding.weight"].shape == (32, 64)
    assert state["blocks.0.ffn.gate.0.weight"].shape == (10240, 4096)


def test_checkpoint_round_trip_bf16(tmp_path):
    """A bf16 file (like the release's) loads into the float32 module with the file's values."""
    from safetensors.torch import save_file

    from dysink_deploy.models.umt5 import build_text_encoder

    src = build_text_encoder(CFG, seed=3)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "t5.safetensors"))
    loaded = build_text_encoder(CFG, str(tmp_path / "t5.safetensors"))
    for k, v in src.state_dict().items():
        assert loaded.state_dict()[k].dtype == torch.float32
        assert torch.equal(loaded.state_dict()[k], v.to(torch.bfloat16).float()), k
