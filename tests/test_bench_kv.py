"""dysink-bench kv-dtype: the fidelity table of 8-bit K/V pages (the numbers are measured, not asserted;
the test checks what the table is made of)."""

from click.testing import CliRunner

from dysink_deploy.bench_kv import measure_kv_dtypes
from dysink_deploy.cli.bench_cli import main as bench_main


def test_table_rows_against_the_bf16_baseline():
    report = measure_kv_dtypes("tiny", blocks=3, kinds=("int8",), threads=1)
    rows = {r.kv_cache_dtype: r for r in report.rows}
    assert list(rows) == ["bf16", "int8"]                       # the baseline is always run, first
    base, q = rows["bf16"], rows["int8"]
    assert (base.latent_max, base.retrieval_blocks, base.gate_blocks, base.dedup_blocks) == (0.0, 0, 0, 0)
    assert 0.0 < q.latent_max < 0.1 and 0.0 < q.latent_rel_rms < 0.01
    # tiny: 72 tokens x 2 heads x 32 dims x 2 layers, K and V: bf16 2 bytes each; int8 1 byte + a float32 scale per row
    elems = 72 * 2 * 32 * 2 * 2
    assert base.page_bytes == elems * 2
    assert q.page_bytes == elems + (elems // 32) * 4


def test_bad_flags_are_one_line(tmp_path):
    for flag in ("--blocks", "--threads"):
        res = CliRunner().invoke(bench_main, ["kv-dtype", flag, "0"])
        assert res.exit_code == 2 and f"{flag} " in res.output and "0" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
