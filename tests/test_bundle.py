"""The bundle manifest and its refusals; the `onnx` / `inspect` commands and their bad inputs."""

import json

import pytest
from click.testing import CliRunner

# The tiny bundle these tests load is exported with onnxscript and checked with onnxruntime.
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from dysink_deploy.bundle import BUNDLE_FORMAT_VERSION, MANIFEST_NAME, Bundle, sha256_file  # noqa: E402
from dysink_deploy.cli.export_cli import main as export_cli  # noqa: E402
from dysink_deploy.config import model_preset  # noqa: E402
from dysink_deploy.errors import DysinkError  # noqa: E402
from dysink_deploy.graphs import graph_specs  # noqa: E402

CFG = model_preset("tiny")
STREAM = CFG.default_stream()


from tests.conftest import edit_manifest as _edit_manifest  # noqa: E402


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and ("rebuild" in msg or "export one" in msg), msg
    return msg


def test_manifest_round_trip(bundles):
    path = bundles("fp32")
    b = Bundle.load(path, expect_model="tiny", expect_stream=STREAM, expect_precision="fp32")
    assert b.model == CFG and b.stream == STREAM and b.precision == "fp32"
    assert b.format_version == BUNDLE_FORMAT_VERSION
    assert b.specs == graph_specs(CFG, STREAM, "fp32")
    m = json.loads((path / MANIFEST_NAME).read_text())
    for name, entry in m["graphs"].items():
        assert b.graph_path(name) == path / entry["file"]
        assert entry["sha256"] == sha256_file(path / entry["file"])
        assert entry["bytes"] == (path / entry["file"]).stat().st_size
        assert entry["external_data"] == []
    assert m["graphs"]["dit_step"]["custom_ops"] == ["dysink::GatedSinkAttention"]
    assert m["opset"] == 20 and m["ir_version"] == 9, "defaults: what TensorRT 10.3's parser documents"
    assert m["custom_op_domain"] == {"domain": "dysink", "version": 1}
    assert sorted(p.name for p in path.iterdir()) == sorted([MANIFEST_NAME] + [f"{n}.onnx" for n in b.graphs])


def test_tampered_file_names_it(bundle_copy):
    f = bundle_copy / "retrieve.onnx"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    Bundle.load(bundle_copy, verify_hashes=False)  # same size: only the hash sees it
    with pytest.raises(DysinkError) as e:
        Bundle.load(bundle_copy)
    msg = _one_line(e)
    assert "retrieve.onnx" in msg and "sha256" in msg and "dysink-export onnx --model tiny" in msg


def test_missing_file(bundle_copy):
    (bundle_copy / "vae_decode.onnx").unlink()
    with pytest.raises(DysinkError, match="missing vae_decode.onnx"):
        Bundle.load(bundle_copy, verify_hashes=False)


def test_missing_bundle(tmp_path):
    with pytest.raises(DysinkError, match="does not exist; export one"):
        Bundle.load(tmp_path / "nope")


def test_other_format_version(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(format_version=BUNDLE_FORMAT_VERSION + 1))
    with pytest.raises(DysinkError) as e:
        Bundle.load(bundle_copy)
    assert f"format version {BUNDLE_FORMAT_VERSION + 1}" in _one_line(e)


def test_other_stream_config(bundles):
    wanted = CFG.default_stream(height=128, top_k=3)
    with pytest.raises(DysinkError) as e:
        Bundle.load(bundles("fp32"), expect_stream=wanted)
    msg = _one_line(e)
    assert "height=64 (wanted 128)" in msg and "top_k=2 (wanted 3)" in msg
    assert "--height 128 --top-k 3" in msg
    # Host-only settings do not invalidate graphs.
    Bundle.load(bundles("fp32"), expect_stream=CFG.default_stream(dedup_threshold=0.9), verify_hashes=False)


def test_other_precision_and_model(bundles):
    with pytest.raises(DysinkError, match="holds fp32 graphs, fp16 was requested.*--precision fp16"):
        Bundle.load(bundles("fp32"), expect_precision="fp16", verify_hashes=False)
    with pytest.raises(DysinkError, match="built for model 'tiny'"):
        Bundle.load(bundles("fp32"), expect_model="wan2.1-t2v-1.3b", verify_hashes=False)


def test_manifest_specs_from_another_contract(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["graphs"]["retrieve"]["outputs"][0].update(shape=[5]))
    with pytest.raises(DysinkError, match="retrieve's inputs/outputs differ.*slots"):
        Bundle.load(bundle_copy, verify_hashes=False)


def _bool_query_valid(m):
    """What bundles before format 4 recorded: retrieve's query_valid as bool (TensorRT plugins take no bool)."""
    spec = next(t for t in m["graphs"]["retrieve"]["inputs"] if t["name"] == "query_valid")
    assert spec["dtype"] == "int32"
    spec["dtype"] = "bool"


def test_bundle_with_a_bool_query_valid_is_refused(bundle_copy):
    """A pre-int32 bundle: its format version (3) is refused with the rebuild command; and a manifest
    claiming the current version with a bool query_valid is refused by the contract check."""
    _edit_manifest(bundle_copy, lambda m: (_bool_query_valid(m), m.update(format_version=3)))
    with pytest.raises(DysinkError) as e:
        Bundle.load(bundle_copy, verify_hashes=False)
    msg = _one_line(e)
    assert "format version 3" in msg and f"reads version {BUNDLE_FORMAT_VERSION}" in msg
    assert "dysink-export onnx" in msg
    _edit_manifest(bundle_copy, lambda m: m.update(format_version=BUNDLE_FORMAT_VERSION))
    with pytest.raises(DysinkError) as e:
        Bundle.load(bundle_copy, verify_hashes=False)
    msg = _one_line(e)
    assert "retrieve's inputs/outputs differ" in msg and "input query_valid [3] bool, expected query_valid [3] int32" \
        in msg and "dysink-export onnx --model tiny" in msg


def test_file_failing_the_checker(bundle_copy):
    """A file whose manifest entry is consistent but which is not a valid ONNX model."""
    import onnx

    from dysink_deploy.export.inspect_bundle import check_bundle

    f = bundle_copy / "retrieve.onnx"
    proto = onnx.load(str(f))
    proto.graph.node[0].input[0] = "no_such_tensor"   # a node reads a value nothing produces
    onnx.save(proto, str(f))
    _edit_manifest(bundle_copy, lambda m: m["graphs"]["retrieve"].update(sha256=sha256_file(f),
                                                                         bytes=f.stat().st_size))
    Bundle.load(bundle_copy)                     # checksums agree...
    with pytest.raises(DysinkError) as e:        # ...but the checker refuses it
        check_bundle(bundle_copy)
    msg = _one_line(e)
    assert "retrieve.onnx (graph retrieve) fails the ONNX checker" in msg
    result = CliRunner().invoke(export_cli, ["inspect", "--bundle", str(bundle_copy)])
    assert result.exit_code == 2 and "fails the ONNX checker" in result.output


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    from dysink_deploy.export import onnx_export

    real = onnx_export.export_graph
    calls = []

    def failing(module, spec, args, path, *rest):
        calls.append(spec.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(module, spec, args, path, *rest)

    monkeypatch.setattr(onnx_export, "export_graph", failing)
    out = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_onnx("tiny", out=out, graphs=["retrieve", "text_encoder"])
    assert calls == ["retrieve", "text_encoder"]
    assert list(tmp_path.iterdir()) == []        # neither the bundle nor its temporary directory


def test_cli_onnx_and_inspect(tmp_path):
    out = tmp_path / "b"
    runner = CliRunner()
    result = runner.invoke(export_cli, ["onnx", "--model", "tiny", "--graph", "retrieve", "--top-k", "3",
                                        "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "DONE | Runtime" in result.output
    b = Bundle.load(out, require=["retrieve"], expect_stream=CFG.default_stream(top_k=3))
    assert list(b.graphs) == ["retrieve"]
    with pytest.raises(DysinkError, match="lacks graph"):
        Bundle.load(out)                         # a partial bundle is not a complete one
    result = runner.invoke(export_cli, ["inspect", "--bundle", str(out)])
    assert result.exit_code == 0, result.output
    assert "node dysink::RetrieveSinks x1 (domain version 1; k=3, plugin_namespace=dysink" in result.output
    assert "out slots            [3]" in result.output and "partial bundle" in result.output
    # An existing bundle is not overwritten without --overwrite.
    result = runner.invoke(export_cli, ["onnx", "--model", "tiny", "--graph", "retrieve", "--out", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output and "Traceback" not in result.output


def test_cli_bad_inputs_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(export_cli, ["onnx", "--model", "tiny", "--checkpoint", str(tmp_path / "no.pt"),
                                        "--graph", "retrieve", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert "no.pt" in result.output and len(result.output.strip().splitlines()) <= 2
    assert not (tmp_path / "b").exists()
    result = runner.invoke(export_cli, ["inspect", "--bundle", str(tmp_path / "missing")])
    assert result.exit_code == 2 and result.output.startswith("error: bundle")


def test_bundle_directory_has_normal_permissions(bundles):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE(os.stat(bundles("fp32")).st_mode)
    assert mode == 0o777 & ~umask, oct(mode)


def test_vae_layout_in_the_manifest(bundles, bundle_copy):
    """fp32 bundles hold frame-major VAE graphs by default; a manifest from before the field means channels
    (and its rebuild command says so); anything else is refused in one line."""
    assert Bundle.load(bundles("fp32"), verify_hashes=False).vae_layout == "frames"
    assert "--vae-layout" not in Bundle.load(bundles("fp32"), verify_hashes=False).rebuild_command()
    _edit_manifest(bundle_copy, lambda m: m.pop("vae_layout"))
    old = Bundle.load(bundle_copy, verify_hashes=False)
    assert old.vae_layout == "channels" and "--vae-layout channels" in old.rebuild_command()
    for bad in ("auto", "rows", 3):
        _edit_manifest(bundle_copy, lambda m: m.update(vae_layout=bad))
        with pytest.raises(DysinkError) as e:
            Bundle.load(bundle_copy, verify_hashes=False)
        assert "vae_layout must be channels or frames" in _one_line(e)


def test_cli_refuses_an_unknown_vae_layout(tmp_path):
    result = CliRunner().invoke(export_cli, ["onnx", "--model", "tiny", "--vae-layout", "rows",
                                             "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--vae-layout" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()
