"""`dysink-export kernels --kv-cache-dtype`: cubins for the K/V page types of ops/kv_pages.py.

int8 pages on sm_87 (Orin) and fp16/bf16: the manifest's key names the page type, the pools are
int8 pointers and the scale pointers sit right after P (what the plugin's Q8 launches pass); the
model-precision variants keep today's argument lists; no variant spills; fp8 is refused below sm_89
and a bundle's own page type cannot be overridden.
"""

from __future__ import annotations

import json

import pytest

from dysink_deploy.config import model_preset
from dysink_deploy.errors import DysinkError
from dysink_deploy.plugins import aot

from .test_aot import _run


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("k8") / "tiny-int8"
    res = _run("kernels", "--model", "tiny", "--precision", "fp16", "--precision", "bf16", "--kv-cache-dtype", "int8",
               "--arch", "87", "--out", str(out), "--report")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "int8 pages" in res.stderr and res.stdout.rstrip().splitlines()[-1].startswith("PASSED")
    return json.loads((out / "kernels.json").read_text())


def test_int8_variants_take_int8_pools_and_their_scales(int8_dir):
    assert int8_dir["kv_cache_dtype"] == "int8"
    by_kernel: dict[str, list] = {}
    for e in int8_dir["kernels"]:
        by_kernel.setdefault(e["kernel"], []).append(e)
        assert e["ptxas"]["spill_stores"] == 0, e["variant"]
    for kernel, scales in (("gate_partial_sums", ["k_scale"]), ("paged_attention", ["k_scale", "v_scale"])):
        assert {e["key"]["dtype"] for e in by_kernel[kernel]} == {"float16", "bfloat16"}
        for e in by_kernel[kernel]:
            assert e["key"]["pages"] == "int8" and e["constexprs"]["PAGES"] == "scaled"
            names = [a["name"] for a in e["args"]]
            types = {a["name"]: a["type"] for a in e["args"]}
            assert names[names.index("P") + 1:names.index("P") + 1 + len(scales)] == scales, names
            assert all(types[s] == "*fp32" for s in scales)
            assert types["k_pool"] == "*i8" and types["q"] in ("*fp16", "*bf16")
            assert "pages-int8" in e["variant"]


def test_model_precision_variants_keep_their_argument_lists():
    """--kv-cache-dtype auto (and bf16 pages under a bf16 model): no scale arguments, no 'pages' key."""
    model = model_preset("tiny")
    for kv, precision in (("auto", "fp16"), ("bf16", "bf16")):
        for v in aot.kernel_variants(model, model.default_stream(), [precision], 87, kv):
            assert "pages" not in v.key and v.page_type is None
            sig = v.signature()
            if v.kernel in ("gate_partial_sums", "paged_attention"):
                assert sig["k_scale"] == "constexpr" and v.constexprs["k_scale"] is None
                assert v.constexprs["PAGES"] == "same"
    cast = [v for v in aot.kernel_variants(model, model.default_stream(), ["fp16"], 87, "bf16")
            if v.kernel == "paged_attention"][0]
    assert cast.key["pages"] == "bf16" and cast.signature()["k_pool"] == "*bf16" and cast.signature()["q"] == "*fp16"
    assert cast.constexprs["PAGES"] == "cast" and cast.signature()["v_scale"] == "constexpr"


def test_fp8_needs_sm89(tmp_path):
    res = _run("kernels", "--model", "tiny", "--kv-cache-dtype", "fp8", "--arch", "87,90", "--out", str(tmp_path / "k"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "fp8 needs sm_89 or newer, --arch names 87; give --arch 90 or use --kv-cache-dtype int8" in res.stderr
    assert not (tmp_path / "k").exists()
    with pytest.raises(DysinkError, match="compute capability 8.9 or newer"):
        aot.kernel_variants(model_preset("tiny"), model_preset("tiny").default_stream(), ["fp16"], 80, "fp8")


def test_a_bundles_page_type_is_its_own(monkeypatch):
    from types import SimpleNamespace

    from dysink_deploy.plugins import cli

    model = model_preset("tiny")
    for held, shown in (("auto", r"model-precision \(auto\)"), ("int8", "int8")):
        fake = SimpleNamespace(path="b", model=model, stream=model.default_stream(), precision="fp16",
                               kv_cache_dtype=held)
        monkeypatch.setattr(cli.Bundle, "load", lambda path, fake=fake: fake)
        assert cli._what_to_compile("b", None, [], True, None)[3] == held          # the bundle's own
        assert cli._what_to_compile("b", None, [], True, held)[3] == held
        other = "fp8" if held != "fp8" else "int8"
        with pytest.raises(DysinkError, match=rf"stores {shown} K/V pages; drop --kv-cache-dtype {other}"):
            cli._what_to_compile("b", None, [], True, other)
    assert cli._what_to_compile(None, "tiny", ["fp16"], True, None)[3] == "auto"
