"""Fixtures shared across the suite."""

import os

import pytest

# The Triton kernels run on CPU tensors under Triton's interpreter, which is chosen
# when a kernel module is imported: set it before any test imports one. GPU runs
# of the kernels go through `dysink-bench kernels` (make gpu-check), not this suite.
os.environ.setdefault("TRITON_INTERPRET", "1")   # `make gpu-check` sets it to 0

# `make test` runs the suite in parallel workers (pytest-xdist, one per core on the 2-core CI
# machine): each worker and the commands it starts use one CPU thread, so two workers do not fight
# over the cores (set before torch or onnxruntime is imported; a test that pins threads still can).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """precision -> bundle path (lazily exported, shared by every export/bundle test)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from dysink_deploy.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("bundles")
    cache: dict[str, object] = {}

    def get(precision: str):
        if precision not in cache:
            cache[precision] = export_onnx("tiny", precision=precision, out=root / precision)
        return cache[precision]

    return get


@pytest.fixture
def bundle_copy(bundles, tmp_path):
    """A private copy of the fp32 tiny bundle, free to tamper with."""
    import shutil

    dst = tmp_path / "b"
    shutil.copytree(bundles("fp32"), dst)
    return dst


def edit_manifest(path, fn):
    """Apply fn to the bundle's manifest dict and write it back."""
    import json

    from dysink_deploy.bundle import MANIFEST_NAME

    m = json.loads((path / MANIFEST_NAME).read_text())
    fn(m)
    (path / MANIFEST_NAME).write_text(json.dumps(m))


TOKENIZER_CORPUS = ["a cat walks on the beach at sunset", "the quick brown fox jumps over the lazy dog",
                    "Ein Hund läuft über die Wiese im Frühling", "城市夜景，霓虹灯闪烁",
                    "a drone shot of snowy mountains & rivers", "café crème brûlée"] * 20


@pytest.fixture(scope="session")
def umt5_tokenizer(tmp_path_factory):
    """A tiny Unigram tokenizer trained here and saved like the release's google/umt5-xxl folder
    (tokenizer.json + configs): <pad> 0, </s> 1 appended, <unk> 2."""
    import json

    pytest.importorskip("tokenizers")
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TOKENIZER_CORPUS, trainers.UnigramTrainer(
        vocab_size=150, unk_token="<unk>", special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    d = tmp_path_factory.mktemp("umt5-tokenizer")
    tok.save(str(d / "tokenizer.json"))
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0,
                                                         "model_max_length": 512, **special}))
    (d / "special_tokens_map.json").write_text(json.dumps(special))
    return d


# ---------------------------------------------------------------------------------------------------
# The suite leaves the checkout as it found it: every test writes under its temporary folders. What
# the checkout holds (tracked changes, untracked and ignored files) is listed at the start and at
# the end of the session; a path that appeared fails the run, named.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CACHES = ("__pycache__", ".pytest_cache", ".egg-info")


def _checkout_state():
    import subprocess

    try:
        proc = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=_ROOT,
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None                       # not a git checkout (an installed copy): nothing to compare
    return {line for line in proc.stdout.splitlines()
            if not any(c in line for c in _CACHES) and not line[3:].startswith(".venv/")}


def pytest_sessionstart(session):
    session.config._dysink_checkout = _checkout_state()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_dysink_checkout", None)
    after = _checkout_state()
    if before is None or after is None or hasattr(session.config, "workerinput"):
        return
    new = sorted(after - before)
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"FAILED | files appeared in the checkout while the suite ran (tests must write under tmp_path): {', '.join(n[3:] for n in new[:10])}"
                                + (f" and {len(new) - 10} more" if len(new) > 10 else ""), red=True)
        session.exitstatus = 1
