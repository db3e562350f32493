"""Export traces with storage-free fake inputs (`trace_inputs`): the same graph as seeded real inputs give."""

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")

from dysink_deploy.config import model_preset  # noqa: E402
from dysink_deploy.export.graph_modules import graph_module, sample_inputs  # noqa: E402
from dysink_deploy.export.onnx_export import default_opset, export_graph, trace_inputs  # noqa: E402
from dysink_deploy.graphs import graph_specs  # noqa: E402
from dysink_deploy.models.factory import build_models  # noqa: E402

CFG = model_preset("tiny")
STREAM = CFG.default_stream()


def test_fake_trace_inputs_give_the_real_inputs_graph(tmp_path):
    """dit_step (the graph with the K/V pools): same nodes, initializers, I/O, functions; same ORT outputs."""
    name, precision = "dit_step", "fp32"
    spec = graph_specs(CFG, STREAM, precision)[name]
    module = graph_module(name, build_models(CFG).eval(), STREAM).eval()
    real = sample_inputs(name, CFG, STREAM, precision, seed=0)
    fake = trace_inputs(spec)
    assert [(tuple(f.shape), f.dtype) for f in fake] == [(tuple(r.shape), r.dtype) for r in real]
    assert all(f.untyped_storage().data_ptr() == 0 for f in fake)      # nothing allocated
    opset, ir = default_opset(precision)
    export_graph(module, spec, real, tmp_path / "old.onnx", opset, ir)
    export_graph(module, spec, fake, tmp_path / "new.onnx", opset, ir)
    old, new = onnx.load(str(tmp_path / "old.onnx")), onnx.load(str(tmp_path / "new.onnx"))
    for m in (old, new):    # the exporter's per-graph metadata records the example inputs; nothing runs it
        del m.graph.metadata_props[:]
    assert old.SerializeToString() == new.SerializeToString()
    feeds = {t.name: a.numpy() for t, a in zip(spec.inputs, sample_inputs(name, CFG, STREAM, precision, seed=5))}
    got_old = ort.InferenceSession(str(tmp_path / "old.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    got_new = ort.InferenceSession(str(tmp_path / "new.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(got_old, got_new):
        np.testing.assert_array_equal(a, b)
