"""Every ONNX Runtime session of the project is made with one set of options: no spinning pool
threads (they stole the next graph's cores: 2 threads ran slower than 1 on 2 cores)."""

import pytest

ort = pytest.importorskip("onnxruntime")

from dysink_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend, session_options  # noqa: E402

SPIN = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def test_options_turn_spinning_off_and_pin_threads():
    opts = session_options(ort, 3)
    assert opts.intra_op_num_threads == 3
    assert [opts.get_session_config_entry(k) for k in SPIN] == ["0", "0"]
    assert session_options(ort).intra_op_num_threads == 0          # 0: ORT's own choice


def test_backend_sessions_carry_the_options(bundles):
    from dysink_deploy.bundle import Bundle

    backend = OnnxRuntimeBackend(Bundle.load(bundles("fp32")), threads=1)
    assert set(backend.sessions) == set(backend.bundle.graphs)
    for name, sess in backend.sessions.items():
        got = sess.get_session_options()
        assert got.intra_op_num_threads == 1, name
        assert [got.get_session_config_entry(k) for k in SPIN] == ["0", "0"], name


def test_check_sessions_carry_the_options(bundles):
    from dysink_deploy.bundle import Bundle
    from dysink_deploy.export.check import _session

    sess = _session(Bundle.load(bundles("fp32")), "retrieve", "cpu", threads=2)
    got = sess.get_session_options()
    assert got.intra_op_num_threads == 2
    assert [got.get_session_config_entry(k) for k in SPIN] == ["0", "0"]
