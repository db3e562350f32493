"""--bank-placement host (runtime/host_bank.py): the bank's pages in a host store, the device pool cut
to the window, the block being made, the fixed sink and top_k staging slots. Here "host" and "device"
are both host memory, but the copies and the slot mapping run as they would on a GPU: the frames,
latents and decisions must be exactly those of the bank on the device."""

from __future__ import annotations

import numpy as np
import pytest

from dysink_deploy.errors import DysinkError
from dysink_deploy.graphs import device_pool_pages
from dysink_deploy.runtime.builder import open_streamer
from dysink_deploy.runtime.host_bank import HostBankBackend
from dysink_deploy.runtime.report import decisions
from dysink_deploy.runtime.spec import RunSpec

BLOCKS = 10
# dedup 0.995, capacity 5: the bank fills, retrieval acts and the bank evicts (10 logical pages, 7 slots)
SETTINGS = {"dedup_threshold": 0.995, "bank_capacity": 5}


def _run(spec, blocks=BLOCKS):
    streamer, config = open_streamer(spec)
    try:
        recs = list(streamer.blocks(blocks))
        return recs, config, streamer.backend
    finally:
        streamer.backend.close()


def _same(a, b):
    assert decisions({"blocks": [r.to_json() for r in a]}) == decisions({"blocks": [r.to_json() for r in b]})
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.latent, y.latent)
        np.testing.assert_array_equal(x.frames, y.frames)
        np.testing.assert_array_equal(x.feature, y.feature)


@pytest.mark.parametrize("kv", ["int8"])        # auto pages: the onnxruntime test below
def test_torch_host_bank_is_bit_identical(kv):
    dev, _, _ = _run(RunSpec(model="tiny", settings=SETTINGS, kv_cache_dtype=kv))
    host, config, backend = _run(RunSpec(model="tiny", settings=SETTINGS, kv_cache_dtype=kv, bank_placement="host"))
    assert config["bank_placement"] == "host" and isinstance(backend, HostBankBackend)
    d = decisions({"blocks": [r.to_json() for r in dev]})
    assert sum(bool(b["retrieved"]) for b in d) >= 3, "retrieval must act for the test to mean anything"
    assert any(r.evicted_start_frame is not None for r in dev), "and the bank must evict"
    _same(dev, host)
    stream = backend.stream
    assert backend.slots == device_pool_pages(stream, "host") == stream.window_history + 1 + stream.top_k
    assert backend.slots < stream.pool_pages
    assert backend.copies_out == BLOCKS                       # each block's page to the host once
    assert backend.copies_in <= stream.top_k * BLOCKS         # at most the retrieved pages come in


def test_onnxruntime_host_bank_is_bit_identical(tmp_path, bundles):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from dysink_deploy.bundle import Bundle
    from dysink_deploy.export.onnx_export import export_onnx

    dev_b = bundles("fp32")                       # the shared tiny bundle: released stream, bank capacity 16
    host_b = export_onnx("tiny", precision="fp32", out=tmp_path / "host", bank_placement="host")
    b = Bundle.load(host_b)
    assert b.bank_placement == "host" and "--bank-placement host" in b.rebuild_command()
    assert b.specs["dit_step"].input("k_pool_0").shape[0] == device_pool_pages(b.stream, "host")
    dev, _, _ = _run(RunSpec(backend="onnxruntime", bundle=str(dev_b), settings={"dedup_threshold": 0.995}))
    host, config, backend = _run(RunSpec(backend="onnxruntime", bundle=str(host_b),
                                         settings={"dedup_threshold": 0.995}))
    assert config["bank_placement"] == "host"
    _same(dev, host)
    with pytest.raises(DysinkError, match="conflicts with bundle .* sized for bank_placement host"):
        open_streamer(RunSpec(backend="onnxruntime", bundle=str(host_b), bank_placement="device",
                              explicit=frozenset({"bank_placement"})))


def test_read_page_reads_the_host_store():
    spec = RunSpec(model="tiny", settings=SETTINGS, bank_placement="host")
    streamer, _ = open_streamer(spec)
    try:
        for _ in range(5):
            streamer.step()
        held = [p for p in range(streamer.cfg.pool_pages) if streamer.pages.refcount(p)]
        assert any(p >= streamer.backend.slots for p in held) or len(held) > 0
        for p in held:
            k, v = streamer.read_page(p)
            assert k.dtype == np.float32 and np.abs(k).max() > 0 and np.abs(v).max() > 0
    finally:
        streamer.backend.close()


class _FakeInner:
    """Records the page traffic; a slot's content is the logical page it was given (checked on read)."""

    name = "fake"

    def __init__(self):
        self.slot_content, self.host = {}, {}
        self.reads = []

    def start(self, prompt, slots):
        self.slots = slots

    def host_store(self, entries):
        return self.host

    def write_page(self, slot, k, v):
        self.slot_content[slot] = k

    def page_to_host(self, slot, store, page):
        store[page] = self.slot_content[slot]

    def page_from_host(self, store, page, slot):
        self.slot_content[slot] = store[page]

    def dit_step(self, x, t, rope, local_ids, sink_ids):
        self.reads.append([self.slot_content[s] if s >= 0 else None for s in [*local_ids, *sink_ids]])
        return None


def test_slot_mapping_copies_what_is_missing_and_never_evicts_what_a_step_reads():
    from dysink_deploy.config import StreamConfig

    stream = StreamConfig(height=64, width=96, bank_capacity=12)          # 17 logical pages, 7 slots
    inner = _FakeInner()
    hb = HostBankBackend(inner, stream)
    hb.start(None, stream.pool_pages)
    assert hb.slots == 7 and stream.pool_pages == 17
    for page in range(17):                                                # every page written once
        hb.write_page(page, f"kv{page}", None)
    assert hb.copies_out == 17 and len(hb.slot_of) == 7
    rng = np.random.default_rng(0)
    for _ in range(200):                                                  # random steps over any pages
        ids = rng.choice(np.arange(-1, 17), size=hb.slots - 1, replace=False)
        local, sink = ids[:4], ids[4:]
        before = hb.copies_in
        hb.dit_step(None, 0.0, None, local, sink)
        missing = len({p for p in ids.tolist() if p >= 0})
        assert hb.copies_in - before <= missing
        # what the step read is exactly the pages it named (-1 stays empty)
        assert inner.reads[-1] == [f"kv{p}" if p >= 0 else None for p in ids.tolist()]
    hb.dit_step(None, 0.0, None, np.array([3, 4, -1, -1]), np.array([5, 6]))
    n = hb.copies_in
    hb.dit_step(None, 0.0, None, np.array([3, 4, -1, -1]), np.array([5, 6]))
    assert hb.copies_in == n                                              # resident: no copy the second time
    hb.dit_step(None, 0.0, None, np.array([40, -7, -1, -1]), np.array([-1, 99]))
    assert inner.reads[-1] == [None] * 6                                  # ids outside the pool are empty
