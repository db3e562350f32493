"""The tensorrt backend's CUDA-graph cache (`dysink-run --cuda-graph`), host logic only.

No GPU or cuda-python here: the cache is driven with a recording stand-in for cuda-python's runtime
module (the calls it makes are cuda-python's names and signatures: cudaStreamBeginCapture(stream,
mode), cudaStreamEndCapture(stream) -> (err, graph), cudaGraphInstantiate(graph, flags) -> (err,
exec), cudaGraphLaunch(exec, stream)). What runs on a GPU is `make gpu-check`'s business."""

from __future__ import annotations

import types

import pytest
from click.testing import CliRunner

from dysink_deploy.errors import DysinkError
from dysink_deploy.runtime.backends.cuda_graphs import GraphCache


class RecordingRuntime:
    def __init__(self, fail: str | None = None):
        self.calls: list[tuple] = []
        self.fail = fail
        self.capturing = False
        self.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal="thread-local")
        self._n = 0

    def cudaGetErrorString(self, err):
        return (0, f"error {err}")

    def cudaStreamBeginCapture(self, stream, mode):
        self.calls.append(("begin", stream, mode))
        if self.fail == "begin":
            return (900,)
        self.capturing = True
        return (0,)

    def cudaStreamEndCapture(self, stream):
        self.calls.append(("end", stream))
        self.capturing = False
        if self.fail == "end":
            return (901, None)
        self._n += 1
        return (0, f"graph{self._n}")

    def cudaGraphInstantiate(self, graph, flags):
        self.calls.append(("instantiate", graph, flags))
        if self.fail == "instantiate":
            return (902, None)
        return (0, f"exec-of-{graph}")

    def cudaGraphLaunch(self, exe, stream):
        self.calls.append(("launch", exe, stream))
        return (0,)

    def cudaGraphDestroy(self, graph):
        self.calls.append(("destroy", graph))
        return (0,)

    def cudaGraphExecDestroy(self, exe):
        self.calls.append(("exec-destroy", exe))
        return (0,)


class Engine:
    """Stands for an execution context: counts real enqueues and those made under capture."""

    def __init__(self, rt, ok=True):
        self.rt, self.ok = rt, ok
        self.direct = self.captured = 0

    def __call__(self):
        if self.rt.capturing:
            self.captured += 1
        else:
            self.direct += 1
        return self.ok


def test_capture_right_after_an_uncaptured_enqueue_with_the_same_addresses():
    """TensorRT does a binding's deferred work (onShapeChange included) in the next enqueue: the
    second launch runs uncaptured first and is captured right after it, so no graph holds that work."""
    rt = RecordingRuntime()
    cache = GraphCache(rt, "s")
    engine = Engine(rt)
    order = []
    rt_calls = rt.calls

    def enqueue():
        order.append("captured" if rt.capturing else "direct")
        return engine()

    key = ("dit_step", (("x_t", 1), ("x0", 2)))
    cache.launch(key, enqueue)
    assert (engine.direct, engine.captured) == (1, 0) and rt_calls == []
    cache.launch(key, enqueue)
    assert (engine.direct, engine.captured) == (2, 1)
    assert order == ["direct", "direct", "captured"]               # capture follows an uncaptured twin
    assert [c[0] for c in rt_calls] == ["begin", "end", "instantiate"]   # recorded, not launched again
    assert rt_calls[0] == ("begin", "s", "thread-local")
    cache.launch(key, enqueue)
    cache.launch(key, enqueue)
    assert (engine.direct, engine.captured) == (2, 1)            # no more enqueues: replays only
    assert [c[0] for c in rt_calls].count("launch") == 2
    assert cache.summary() == {"graphs": 1, "replays": 2, "disabled": None}


def test_other_addresses_get_their_own_graph():
    rt = RecordingRuntime()
    cache = GraphCache(rt, "s")
    engine = Engine(rt)
    a, b = ("dit_step", (("x_t", 1),)), ("dit_step", (("x_t", 5),))
    for key in (a, b, a, b, a, b):
        cache.launch(key, engine)
    assert (engine.direct, engine.captured) == (4, 2)
    launched = [c[1] for c in rt.calls if c[0] == "launch"]
    assert launched == ["exec-of-graph1", "exec-of-graph2"]
    cache.close()
    assert {c[0] for c in rt.calls[-4:]} == {"exec-destroy", "destroy"} and cache.execs == {}


@pytest.mark.parametrize("where", ["begin", "end", "instantiate"])
def test_a_failed_capture_disables_graphs_and_still_runs(where, capsys):
    rt = RecordingRuntime(fail=where)
    cache = GraphCache(rt, "s")
    engine = Engine(rt)
    key = ("renoise", (("y", 3),))
    for _ in range(4):
        cache.launch(key, engine)
    assert engine.direct == 4                      # every launch ran once, none was lost or doubled
    assert where in cache.disabled.lower()
    assert "CUDA graphs disabled" in capsys.readouterr().err
    assert [c[0] for c in rt.calls].count("begin") == 1     # given up once, not retried per launch


def test_an_enqueue_refused_under_capture_falls_back():
    rt = RecordingRuntime()
    cache = GraphCache(rt, "s")

    class Picky(Engine):
        def __call__(self):
            super().__call__()
            return not self.rt.capturing

    engine = Picky(rt)
    for _ in range(3):
        cache.launch(("vae_decode", ()), engine)
    assert cache.disabled == "TensorRT could not enqueue under capture"
    assert engine.direct == 3 and ("destroy", "graph1") in rt.calls


def test_a_failed_enqueue_is_one_clear_error():
    rt = RecordingRuntime()
    cache = GraphCache(rt, "s")
    with pytest.raises(DysinkError, match="TensorRT failed to enqueue dit_step"):
        cache.launch(("dit_step", ()), Engine(rt, ok=False))


def test_limit_bounds_the_number_of_graphs():
    rt = RecordingRuntime()
    cache = GraphCache(rt, "s", limit=1)
    engine = Engine(rt)
    for key in [("g", (i,)) for i in range(3)] * 3:
        cache.launch(key, engine)
    assert len(cache.execs) == 1 and engine.direct == 8


def test_cuda_graph_flag_needs_tensorrt_or_torch_on_cuda(tmp_path):
    from dysink_deploy.runtime.cli import main

    result = CliRunner().invoke(main, ["--cuda-graph", "--blocks", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == ("error: --cuda-graph on --backend torch needs --device cuda "
                                                      "(CUDA graphs replay GPU launches)")
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(main, ["--backend", "onnxruntime", "--bundle", str(tmp_path), "--cuda-graph",
                                       "--blocks", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--cuda-graph applies to --backend tensorrt and torch only" in result.output


def test_cuda_python_names_exist_in_12_and_13():
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    data = json.loads((root / "export" / "data" / "cudart_python_api.json").read_text())["present"]
    assert all(all(v.values()) for v in data.values()), {n: v for n, v in data.items() if not all(v.values())}
    text = "".join((root / "runtime" / "backends" / name).read_text()
                   for name in ("cuda.py", "cuda_graphs.py", "tensorrt_backend.py", "tensorrt_ops.py"))
    used = set(re.findall(r"\brt\.([A-Za-z_][A-Za-z0-9_.]*[A-Za-z0-9_])", text))
    assert used, "the backend uses cuda-python through `rt.`"
    assert used <= set(data), f"add to export/data/cudart_python_api.json and check: {sorted(used - set(data))}"
