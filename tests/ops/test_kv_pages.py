"""8-bit K/V pages (`kv_cache_dtype` int8 / fp8): the one quantiser (ops/kv_pages.py), its numpy twin
(the torch-free backends), and the GatedSinkAttentionQ8 function body run by ONNX Runtime against
the PyTorch reference reading the same quantised pools.

The body dequantises exactly as the reference does (q * scale in float32, then the model dtype), so
the body and the reference differ only by summation order, as for model-precision pools (checked at
1e-6 on O(1) outputs, the bound of test_onnx_functions); gate ratios must be equal."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper

ort = pytest.importorskip("onnxruntime")
from dysink_deploy.ops.gated_sink_attention import gated_sink_attention_ref  # noqa: E402
from dysink_deploy.ops.kv_pages import dequantise_pages, quantise_page  # noqa: E402
from dysink_deploy.ops.onnx_functions import OPSET, function_protos  # noqa: E402
from dysink_deploy.runtime.pages import np_quantise_page  # noqa: E402

L, H, D, P = 5, 3, 6, 4
_POOL_ET = {"int8": TP.INT8, "fp8": TP.FLOAT8E4M3FN, "bf16": TP.BFLOAT16}
ID_CASES = [([1, -1], [0, 3, -1]), ([-1, -1], [-1, -1, -1]), ([2, 2], [1, 1, 3]), ([4, 1], [-2, 2, 9])]


def _ort_value(t: torch.Tensor):
    """A torch tensor as an OrtValue (8-bit float and bf16 pools travel as their bits)."""
    if t.dtype in (torch.float8_e4m3fn, torch.bfloat16):
        bits = t.view(torch.uint8 if t.dtype == torch.float8_e4m3fn else torch.int16).numpy()
        et = TP.FLOAT8E4M3FN if t.dtype == torch.float8_e4m3fn else TP.BFLOAT16
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, onnx_element_type=et)
    return ort.OrtValue.ortvalue_from_numpy(t.numpy())


def q8_session(kind, threshold=0.5, sink_kv_bf16=1, fixed_sinks=0, s_loc=2, s_sink=3):
    f = TP.FLOAT
    quantised = kind in ("int8", "fp8")
    ins = [("q", f, [L, H, D]), ("k_cur", f, [L, H, D]), ("v_cur", f, [L, H, D]),
           ("k_pool", _POOL_ET[kind], [P, L, H, D]), ("v_pool", _POOL_ET[kind], [P, L, H, D]),
           ("local_ids", TP.INT64, [s_loc]), ("sink_ids", TP.INT64, [s_sink])]
    if quantised:
        ins += [("k_scale", f, [P, L, H]), ("v_scale", f, [P, L, H])]
    ins = [helper.make_tensor_value_info(n, et, s) for n, et, s in ins]
    outs = [helper.make_tensor_value_info("out", f, [L, H, D]), helper.make_tensor_value_info("ratios", f, [s_sink])]
    node = helper.make_node("GatedSinkAttentionQ8" if quantised else "GatedSinkAttention", [i.name for i in ins],
                            ["out", "ratios"], domain="dysink", plugin_namespace="dysink", plugin_version="1",
                            threshold=threshold, sink_kv_bf16=sink_kv_bf16, fixed_sinks=fixed_sinks)
    model = helper.make_model(helper.make_graph([node], "q8", ins, outs),
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("dysink", 1)],
                              functions=function_protos())
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _args(seed, local_ids, sink_ids, kind):
    g = torch.Generator().manual_seed(seed)
    q, kc, vc = (torch.randn(L, H, D, generator=g) for _ in range(3))
    # rows of very different magnitudes (per-token outliers): what per-row scales are for
    kp, vp = (torch.randn(P, L, H, D, generator=g) * torch.rand(P, L, H, 1, generator=g) * 4 for _ in range(2))
    if kind == "bf16":
        return [q, kc, vc, kp.bfloat16(), vp.bfloat16(), torch.tensor(local_ids), torch.tensor(sink_ids)], {}
    (kq, ks), (vq, vs) = quantise_page(kp, kind), quantise_page(vp, kind)
    return [q, kc, vc, kq, vq, torch.tensor(local_ids), torch.tensor(sink_ids)], {"k_scale": ks, "v_scale": vs}


@pytest.mark.parametrize("fixed_sinks", [0, 1])
@pytest.mark.parametrize("local_ids,sink_ids", ID_CASES)
@pytest.mark.parametrize("kind", ["int8", "fp8", "bf16"])
def test_body_matches_the_reference_on_the_same_pages(kind, local_ids, sink_ids, fixed_sinks):
    sess = q8_session(kind, fixed_sinks=fixed_sinks)
    names = [i.name for i in sess.get_inputs()]
    for seed in range(2):
        args, scales = _args(seed, local_ids, sink_ids, kind)
        ref_out, ref_ratios = gated_sink_attention_ref(*args, 0.5, True, fixed_sinks, **scales)
        feeds = dict(zip(names, [_ort_value(a) for a in args + list(scales.values())]))
        out, ratios = sess.run_with_ort_values(None, feeds)
        # Both compute in float32 over the same dequantised pages (the reference casts to float32
        # itself, so no float64 run of it exists): they differ in summation order only, which is a
        # few float32 ulps of the output's scale (ORT 1.32 here: 2.3 ulps at most).
        ulp = np.finfo(np.float32).eps * np.abs(ref_out.numpy()).max()
        np.testing.assert_allclose(out.numpy(), ref_out.numpy(), atol=4 * ulp, rtol=0)
        np.testing.assert_array_equal(ratios.numpy(), ref_ratios.numpy())


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_quantiser_error_is_half_a_step_of_each_row(kind):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 9, 4, 32, generator=g) * torch.logspace(-3, 2, 9)[None, :, None, None]
    q, scale = quantise_page(x, kind)
    assert q.dtype == {"int8": torch.int8, "fp8": torch.float8_e4m3fn}[kind] and scale.shape == x.shape[:-1]
    back = dequantise_pages(q, scale, torch.float32)
    amax = x.abs().amax(-1, keepdim=True)
    err = (back - x).abs() / amax
    # int8: uniform steps of amax/127, error <= half a step; e4m3: 3 mantissa bits, relative error
    # <= 2^-4 of the value, so <= 1/16 of the row maximum (and below e4m3's normal range, an absolute step)
    bound = 0.5 / 127 if kind == "int8" else 1 / 16
    assert err.max().item() <= bound * (1 + 1e-6), err.max().item()
    # every row's maximum is represented: its largest element maps to +-QMAX exactly
    assert torch.allclose(back.abs().amax(-1), x.abs().amax(-1), rtol=1e-6)
    zero_q, zero_s = quantise_page(torch.zeros(2, 3, 8), kind)
    assert zero_q.float().abs().sum() == 0 and torch.equal(zero_s, torch.ones(2, 3))


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_numpy_quantiser_is_bit_identical_to_torch(kind, dtype):
    """The onnxruntime backend quantises its pages with numpy (torch-free): same bits, same scales."""
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(3, 10, 2, 16, generator=g) * torch.rand(3, 10, 2, 1, generator=g) * 50).to(dtype)
    x[0, 0, 0] = 0.0
    x[1, 2, 1, :4] = 127.5 * x[1, 2, 1].abs().max() / 127          # ties at the rounding boundary
    q, scale = quantise_page(x, kind)
    nq, nscale = np_quantise_page(x.numpy(), kind)
    np.testing.assert_array_equal(nscale, scale.numpy())
    bits = torch.uint8 if kind == "fp8" else torch.int8
    np.testing.assert_array_equal(nq.view(np.uint8 if kind == "fp8" else np.int8), q.view(bits).numpy())
