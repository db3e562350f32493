"""libdysink_plugins.so, host side: built against each TensorRT header version found, then the C++
harness (tests/plugins/cpp/plugin_harness.cpp) dlopens it on this CPU-only machine and creates each
plugin from the attributes of the custom nodes of a real exported tiny bundle; how it and
libdysink_plugins_autoreg.so register the plugins is checked against a registry test double standing
in for libnvinfer (tests/plugins/cpp/registry_double.cpp, registration_harness.cpp), including the
refusal of another TensorRT major; the lazy driver's current-context rule against a CUDA driver test
double (driver_double.cpp, context_harness.cpp); its cubin choice per GPU architecture through
dysinkFindKernel, and the CMake project's handling of a changed TensorRT include folder.

Headers are never committed. Point the tests at them with
    DYSINK_TRT_INCLUDE_DIRS=/path/TensorRT-10.3/include:/path/TensorRT-11.1/include
(or TensorRT_INCLUDE_DIR for one version); without any, the C++ tests skip with that reason.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dysink_deploy.errors import DysinkError
from dysink_deploy.plugins import build as B

TEST_CPP = Path(__file__).parent / "cpp"      # the test programs' CMake project


def _header_dirs() -> list[Path]:
    listed = os.environ.get("DYSINK_TRT_INCLUDE_DIRS", "")
    dirs = [Path(p) for p in listed.split(os.pathsep) if p]
    single = B.find_tensorrt_include() if not dirs and os.environ.get("TensorRT_INCLUDE_DIR") else None
    if single:
        dirs.append(single)
    return [d for d in dirs if (d / "NvInferRuntime.h").is_file()]


HEADERS = _header_dirs()
NO_HEADERS = ("no TensorRT headers: set DYSINK_TRT_INCLUDE_DIRS (or TensorRT_INCLUDE_DIR) to build and test the "
              "plugin library")
TOOLS = shutil.which("cmake") and shutil.which("c++")


@pytest.fixture(scope="module")
def node_attributes(bundles):
    """threshold / sink_kv_bf16 / fixed_sinks and sink_size / k, read from the bundle's ONNX nodes."""
    import onnx
    from onnx import helper

    from dysink_deploy.bundle import Bundle

    bundle = Bundle.load(bundles("fp16"))
    attrs = {}
    for graph, op in (("dit_step", "GatedSinkAttention"), ("retrieve", "RetrieveSinks")):
        model = onnx.load(str(bundle.graph_path(graph)), load_external_data=False)
        node = next(n for n in model.graph.node if n.op_type == op and n.domain == "dysink")
        attrs[op] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return attrs


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    from dysink_deploy.config import model_preset
    from dysink_deploy.plugins import aot

    model = model_preset("tiny")
    return aot.compile_kernels(model, model.default_stream(), ["fp16"], [87], tmp_path_factory.mktemp("k") / "kernels")


def _run(cmd: list, **kwargs) -> str:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert res.returncode == 0, f"{' '.join(map(str, cmd[:4]))} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@dataclass
class Built:
    include: Path
    lib: Path                       # libdysink_plugins.so, built by dysink-export plugins' build_library
    autoreg: Path                   # libdysink_plugins_autoreg.so, built beside it
    harness: Path                   # plugin_harness
    registration: Path              # registration_harness
    standin: Path                   # the registry test double, libnvinfer.so.<version> (soname libnvinfer.so.<major>)
    context: Path                   # context_harness
    cuda_standin: Path              # folder of the CUDA driver test double, libcuda.so.1
    cudart_standin: Path            # the CUDA runtime test double, libcudart.so.13


@pytest.fixture(scope="module")
def built(kernel_dir, tmp_path_factory):
    """include folder -> the library and the test programs built against it (once per header version)."""
    cache: dict[str, Built] = {}

    def get(include: Path) -> Built:
        if str(include) not in cache:
            version = B.tensorrt_header_version(include)
            root = tmp_path_factory.mktemp(f"plugins-{version}")
            lib = B.build_library(kernel_dir, root / "build", include)
            # Both libraries build without warnings (-Wall -Wextra): rebuilt here to see the compiler's output.
            out = _run(["cmake", "--build", root / "build", "--clean-first", "-j", str(os.cpu_count() or 2)])
            assert "warning:" not in out and (lib.parent / B.AUTOREG_LIBRARY).is_file(), out
            tests = root / "tests"
            _run(["cmake", "-S", TEST_CPP, "-B", tests, f"-DTensorRT_INCLUDE_DIR={include}",
                  f"-DDYSINK_TRT_VERSION={version}"])
            out = _run(["cmake", "--build", tests, "-j", str(os.cpu_count() or 2)])
            assert "warning:" not in out, out          # the test programs build with -Wall -Wextra
            cache[str(include)] = Built(include, lib, lib.parent / B.AUTOREG_LIBRARY, tests / "plugin_harness",
                                        tests / "registration_harness", tests / "standin" / f"libnvinfer.so.{version}",
                                        tests / "context_harness", tests / "standin-cuda",
                                        tests / "standin-cudart" / "libcudart.so.13")
        return cache[str(include)]

    return get


def _no_gpu_env() -> dict:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def _checks(res: subprocess.CompletedProcess) -> None:
    failed = [line for line in res.stdout.splitlines() if line.startswith("FAIL")]
    assert res.returncode == 0 and not failed, "\n".join(failed) or (res.stdout[-2000:] + res.stderr[-2000:])
    assert res.stdout.rstrip().endswith("0 failures")


@pytest.mark.skipif(not HEADERS, reason=NO_HEADERS)
@pytest.mark.skipif(not TOOLS, reason="cmake and a C++ compiler are needed to build the plugin library")
@pytest.mark.parametrize("include", HEADERS, ids=[B.tensorrt_header_version(h) for h in HEADERS])
def test_harness_against_headers(include, built, node_attributes):
    b = built(include)
    lib = b.lib
    gsa, rs = node_attributes["GatedSinkAttention"], node_attributes["RetrieveSinks"]
    assert gsa["plugin_namespace"] == b"dysink" and gsa["plugin_version"] == b"1"
    # Symbols: only the entry points are exported, and nothing from TensorRT or CUDA is needed.
    nm = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    assert {"getCreators", "setLoggerFinder", "dysinkRegisterPlugins", "dysinkPluginsTensorRTVersion",
            "dysinkLoadedTensorRTVersion", "dysinkDeviceArch"} <= {line.split()[-1] for line in nm.splitlines()}
    needed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True).stdout
    assert "nvinfer" not in needed and "libcuda" not in needed and "cudart" not in needed, needed
    # The autoreg library needs only the main one, found beside it ($ORIGIN), and exports nothing of its own.
    autoreg = subprocess.run(["readelf", "-d", str(b.autoreg)], capture_output=True, text=True).stdout
    assert f"[{B.LIBRARY}]" in autoreg and "Library runpath: [$ORIGIN]" in autoreg, autoreg
    assert "nvinfer" not in autoreg and "libcuda" not in autoreg and "cudart" not in autoreg, autoreg
    autoreg_nm = subprocess.run(["nm", "-D", "--defined-only", str(b.autoreg)], capture_output=True, text=True).stdout
    assert not any(w in autoreg_nm for w in ("getCreators", "dysink")), autoreg_nm
    # No test double in the library: it defines no registry of its own.
    assert "getPluginRegistry" not in nm and "registryDouble" not in nm
    res = subprocess.run([str(b.harness), str(lib), repr(gsa["threshold"]),
                          str(gsa["sink_kv_bf16"]), str(gsa["fixed_sinks"]), str(rs["sink_size"]), str(rs["k"]), "87"],
                         capture_output=True, text=True, env=_no_gpu_env())
    _checks(res)


# ---------------- registration, against the registry test double ----------------

SCENARIOS = ["load-library", "local-nvinfer", "no-nvinfer", "other-major", "flags-load-time-calls"]


def _said(stderr: str, text: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("[dysink plugins]") and text in line]


@pytest.mark.skipif(not HEADERS, reason=NO_HEADERS)
@pytest.mark.skipif(not TOOLS, reason="cmake and a C++ compiler are needed to build the plugin library")
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("include", HEADERS, ids=[B.tensorrt_header_version(h) for h in HEADERS])
def test_registration_with_the_registry_double(include, scenario, built):
    """The double's loadLibrary flags any registry call made while it loads a library and calls its
    getCreators. load-library: libdysink_plugins.so through it makes none, both creators registered once.
    local-nvinfer: a libnvinfer loaded RTLD_LOCAL; the main library registers nothing when loaded, the
    autoreg library registers both once, dysinkRegisterPlugins() again adds nothing. no-nvinfer: nothing
    registered, no crash, one line from the autoreg library; dysinkRegisterPlugins() registers once a
    libnvinfer is there. other-major: no creators and one refusal line each time; the same major with
    another minor gets both. flags-load-time-calls: the double does catch load-time calls (the autoreg
    library given to loadLibrary, which users must not do). (registration_harness.cpp)"""
    b = built(include)
    res = subprocess.run([str(b.registration), scenario, str(b.lib), str(b.autoreg), str(b.standin)],
                         capture_output=True, text=True, env=_no_gpu_env())
    _checks(res)
    said = _said(res.stderr, "")
    if scenario == "no-nvinfer":
        assert len(said) == 1 and "no TensorRT is loaded in this process" in said[0], res.stderr
    elif scenario == "other-major":
        # The refusals while a logger was set went to it; the autoreg library's, without one, to stderr.
        major = B.tensorrt_header_version(include).split(".")[0]
        assert len(said) == 1 and f"targets TensorRT {major} (headers {B.tensorrt_header_version(include)})" \
            in said[0] and "no plugins registered" in said[0], res.stderr
    elif scenario != "flags-load-time-calls":
        assert not said, res.stderr


CTYPES_SCRIPT = """
import ctypes, json, sys
standin = ctypes.CDLL(sys.argv[1])        # ctypes' default mode: RTLD_LOCAL, as the tensorrt package loads libnvinfer
ctypes.CDLL(sys.argv[2])                  # libdysink_plugins_autoreg.so: registers when loaded
count = lambda what: standin.registryDoubleCount(what.encode())
after_load = count("register")
plugin = ctypes.CDLL(sys.argv[3])         # libdysink_plugins.so (loaded already, as the autoreg library's dependency)
plugin.dysinkRegisterPlugins.restype = ctypes.c_bool
again = [plugin.dysinkRegisterPlugins(), plugin.dysinkRegisterPlugins()]
active = {n: standin.registryDoubleActive(n.encode(), b"dysink")
          for n in ("GatedSinkAttention", "RetrieveSinks", "GatedSinkAttentionQ8")}
print(json.dumps({"after_load": after_load, "again": again, "register": count("register"), "refused": count("refused"),
                  "active": count("active"), "errors": count("errors"), "by_name": active,
                  "built": plugin.dysinkPluginsTensorRTVersion(), "loaded": plugin.dysinkLoadedTensorRTVersion()}))
"""


@pytest.mark.skipif(not HEADERS, reason=NO_HEADERS)
@pytest.mark.skipif(not TOOLS, reason="cmake and a C++ compiler are needed to build the plugin library")
def test_ctypes_cdll_of_the_autoreg_library_registers_with_an_rtld_local_libnvinfer(built):
    """The documented Python path: a libnvinfer loaded RTLD_LOCAL (here the test double), then
    ctypes.CDLL(libdysink_plugins_autoreg.so) registers the three creators; dysinkRegisterPlugins() twice
    more registers nothing."""
    b = built(HEADERS[0])
    res = subprocess.run([sys.executable, "-c", CTYPES_SCRIPT, str(b.standin), str(b.autoreg), str(b.lib)],
                         capture_output=True, text=True, env=_no_gpu_env())
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.splitlines()[-1])
    major, minor, patch = (int(x) for x in B.tensorrt_header_version(HEADERS[0]).split("."))
    version = (major * 100 + minor) * 100 + patch
    assert got == {"after_load": 3, "again": [True, True], "register": 3, "refused": 0, "active": 3, "errors": 0,
                   "by_name": {"GatedSinkAttention": 1, "RetrieveSinks": 1, "GatedSinkAttentionQ8": 1},
                   "built": version, "loaded": version}
    assert "[dysink plugins]" not in res.stderr, res.stderr


# ---------------- a current CUDA context, against a CUDA driver test double ----------------

def _real_cuda_driver() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


DEVICE_ARCH_SCRIPT = """
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
msg = ctypes.create_string_buffer(1024)
arch = lib.dysinkDeviceArch(msg, len(msg))
print(json.dumps([arch, msg.value.decode()]))
"""


@pytest.mark.skipif(not HEADERS, reason=NO_HEADERS)
@pytest.mark.skipif(not TOOLS, reason="cmake and a C++ compiler are needed to build the plugin library")
def test_current_context_rule_with_the_driver_double(built):
    """A thread without a current context: the stream's context for a launch, else the primary context of
    the CUDA runtime's current device (device 0 without a runtime), retained once and made current; a
    failing call is one line. Without any driver: one line naming libcuda.so.1, no crash
    (context_harness.cpp, compiled with plugins/cpp/src/cuda_driver.cpp; and the library's dysinkDeviceArch)."""
    b = built(HEADERS[0])
    env = {**_no_gpu_env(), "LD_LIBRARY_PATH": os.pathsep.join(
        [str(b.cuda_standin)] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])}
    env.pop("CUDA_VISIBLE_DEVICES")
    _checks(subprocess.run([str(b.context), "stand-in", str(b.cudart_standin)], capture_output=True, text=True,
                           env=env))
    res = subprocess.run([sys.executable, "-c", DEVICE_ARCH_SCRIPT, str(b.lib)], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0 and json.loads(res.stdout.splitlines()[-1]) == [87, ""], res.stdout + res.stderr
    if _real_cuda_driver():
        return                                  # a machine with a driver cannot show the no-driver path
    _checks(subprocess.run([str(b.context), "no-driver"], capture_output=True, text=True, env=_no_gpu_env()))
    res = subprocess.run([sys.executable, "-c", DEVICE_ARCH_SCRIPT, str(b.lib)], capture_output=True, text=True,
                         env=_no_gpu_env())
    assert res.returncode == 0, res.stderr
    arch, message = json.loads(res.stdout.splitlines()[-1])
    assert arch == -1 and "libcuda.so.1" in message and "\n" not in message, message


# ---------------- which cubin runs on which GPU ----------------

FIND_SCRIPT = """
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
find = lib.dysinkFindKernel
find.argtypes = [ctypes.c_char_p] + [ctypes.c_int] * 5 + [ctypes.c_char_p, ctypes.c_int]
out = {}
for arch in sys.argv[2:]:
    msg = ctypes.create_string_buffer(2048)
    got = find(b"paged_attention", 1, 32, 0, 1, int(arch), msg, len(msg))   # float16, head dim 32, sink rounding
    out[arch] = [got, msg.value.decode()]
print(json.dumps(out))
"""


def _relabelled_kernel_dir(kernel_dir: Path, dest: Path, archs: list[int]) -> Path:
    """A kernel directory whose table lists the sm_87 cubins under other architectures too: enough for
    the choice of cubin (no cubin is loaded without a GPU), and no compile for each architecture."""
    shutil.copytree(kernel_dir, dest)
    manifest = json.loads((dest / "kernels.json").read_text())
    extra = []
    for arch in archs:
        (dest / f"sm{arch}").mkdir()
        for e in manifest["kernels"]:
            file = e["file"].replace("sm87/", f"sm{arch}/")
            shutil.copy(dest / e["file"], dest / file)
            extra.append({**e, "arch": arch, "file": file})
    manifest["kernels"] += extra
    manifest["archs"] = sorted({87, *archs})
    (dest / "kernels.json").write_text(json.dumps(manifest))
    return dest


@pytest.mark.skipif(not HEADERS, reason=NO_HEADERS)
@pytest.mark.skipif(not TOOLS, reason="cmake and a C++ compiler are needed to build the plugin library")
def test_cubin_choice_per_gpu_architecture(kernel_dir, tmp_path):
    """Plain sm_8x cubins run on a later minor of the same major; sm_90 and newer (Triton's arch-specific
    sm_90a / sm_100a / sm_110a / sm_120a) only on exactly their architecture. A missing architecture the
    CLI can compile for is named with a command that adds it; one it cannot, is said to be unsupported."""
    from dysink_deploy.plugins import aot
    from dysink_deploy.plugins.cli import plugins_command

    kernels = _relabelled_kernel_dir(kernel_dir, tmp_path / "kernels", [80, 100, 120])   # + the real sm_87
    lib = B.build_library(kernels, tmp_path / "build", HEADERS[0])
    queries = [80, 87, 100, 120, 86, 89, 121, 103, 75, 90, 110]
    res = subprocess.run([sys.executable, "-c", FIND_SCRIPT, str(lib), *map(str, queries)], capture_output=True,
                         text=True, env=_no_gpu_env())
    assert res.returncode == 0, res.stderr
    got = {int(k): v for k, v in json.loads(res.stdout.splitlines()[-1]).items()}
    for arch in (80, 87, 100, 120):
        assert got[arch][0] == arch, got[arch]                     # exact match
    assert got[86][0] == 80, got[86]                                # sm_86 GPU runs the sm_80 cubin
    assert got[89][0] == 87, got[89]                                # sm_89 runs the newest older minor, sm_87
    embedded = "sm_80, sm_87, sm_100, sm_120"
    for arch in (121, 103, 75):                                     # no sm_120 cubin on sm_121, no sm_100 on sm_103
        code, msg = got[arch]
        assert code == -1 and f"this GPU is sm_{arch}, which the compiled kernels do not support" in msg, msg
        assert embedded in msg and "--out" not in msg, msg
    for arch in (90, 110):                                          # compilable: the command that adds it
        code, msg = got[arch]
        want = ",".join(str(a) for a in sorted({80, 87, 100, 120, arch}))
        command = f"dysink-export plugins --bundle BUNDLE --arch {want} --out DIR --overwrite"
        assert code == -1 and f"this GPU is sm_{arch} but" in msg and msg.endswith(command), msg
        # ... and the command is one the CLI takes: its options parse and its architectures are accepted.
        ctx = plugins_command.make_context("plugins", shlex.split(command)[2:])
        assert ctx.params["bundle_path"] == "BUNDLE" and ctx.params["overwrite"] and ctx.params["out"] == "DIR"
        assert aot.parse_archs(ctx.params["arch_text"]) == sorted({80, 87, 100, 120, arch})


# ---------------- CMake: a changed TensorRT include folder wins on re-configure ----------------

def _configured_include(build: Path) -> str:
    """The TensorRT -isystem folder the library's sources are compiled with."""
    commands = json.loads((build / "compile_commands.json").read_text())
    command = next(c["command"] for c in commands if c["file"].endswith("registration.cpp"))
    words = shlex.split(command)
    found = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-isystem"
             and (Path(words[i + 1]) / "NvInferRuntime.h").is_file()]
    assert len(found) == 1, command
    return found[0]


@pytest.mark.skipif(not HEADERS, reason=NO_HEADERS)
@pytest.mark.skipif(not shutil.which("cmake"), reason="cmake is needed to configure the plugin library")
def test_cmake_reconfigure_uses_the_new_include_folder(tmp_path):
    first = HEADERS[0]
    # A second folder: the other header version if given, else the same headers under another path.
    second = HEADERS[1] if len(HEADERS) > 1 else tmp_path / "other" / "include"
    if not second.exists():
        second.parent.mkdir()
        second.symlink_to(first, target_is_directory=True)
    source = tmp_path / "kernels_embedded.cpp"   # configure only: never compiled
    source.write_text("")
    build = tmp_path / "build"

    def configure(*defs: str, ok: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(["cmake", "-S", str(B.CPP_DIR), "-B", str(build), f"-DDYSINK_KERNELS_SOURCE={source}",
                              "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON", *defs], capture_output=True, text=True)
        assert (res.returncode == 0) == ok, res.stdout[-2000:] + res.stderr[-2000:]
        return res

    configure(f"-DTensorRT_INCLUDE_DIR={first}")
    assert _configured_include(build) == str(first)
    configure(f"-DTensorRT_INCLUDE_DIR={second}")
    assert _configured_include(build) == str(second)
    # A new TensorRT_ROOT (no new include folder) wins over the include folder cached before.
    root = tmp_path / "root"
    (root).mkdir()
    (root / "include").symlink_to(first, target_is_directory=True)
    configure(f"-DTensorRT_ROOT={root}")
    assert _configured_include(build) == str(root / "include")
    # An explicit folder without the headers is an error, not a silent fall back to another folder.
    res = configure(f"-DTensorRT_INCLUDE_DIR={tmp_path}", ok=False)
    assert f"no NvInferRuntime.h in {tmp_path}" in " ".join(res.stderr.split())   # cmake wraps its lines


def test_missing_headers_are_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("TensorRT_ROOT", raising=False)
    monkeypatch.setenv("TensorRT_INCLUDE_DIR", str(tmp_path))
    with pytest.raises(DysinkError, match="no NvInferRuntime.h in"):
        B.find_tensorrt_include()


def test_embedded_source_names_every_cubin(kernel_dir):
    from dysink_deploy.plugins.embed import embedded_source

    text = embedded_source(kernel_dir)
    n = len(json.loads((kernel_dir / "kernels.json").read_text())["kernels"])
    assert text.count(".incbin") == n and f"kNumKernelImages = {n};" in text
    # float16, head dim 32, sink rounding on, pages 0 (the model dtype's: kernels.json has no "pages" key)
    assert '"paged_attention", 87, 1, 32, 0, 1, 0,' in text
    # What the missing-architecture message may suggest: exactly what `--arch` accepts.
    from dysink_deploy.plugins.embed import plugin_args
    from dysink_deploy.plugins.variants import ARCHS
    assert f"kCompilableArchs[] = {{{', '.join(map(str, ARCHS))}}};" in text
    # Each row carries the cubin's argument count (checked at every launch against the plugin's list).
    for e in json.loads((kernel_dir / "kernels.json").read_text())["kernels"]:
        row = next(line for line in text.splitlines() if line.startswith(f'    {{"{e["kernel"]}", 87,'))
        fields = [f.strip() for f in row.strip(" {},").split(",")]
        assert int(fields[6]) == 0 and int(fields[14]) == len(e["args"]) - 2, (e["kernel"], fields)
        assert plugin_args(e["kernel"], "auto") in (None, [a["name"] for a in e["args"][:-2]]), e["kernel"]
