"""dysink-serve's safety (issue 22), against a tritonserver stand-in (a small Python program that
takes tritonserver's flags, binds what they say the way tritonserver does, 0.0.0.0 when no address
is given, and answers the readiness probe): HTTP, gRPC and metrics listen on 127.0.0.1 unless
--host says otherwise; the child dies with its parent (SIGKILL included); a taken or invalid port
is one line naming it, before the launch and when the launch fails; a second dysink-serve does not
write over the python backend stub a running server executes (ETXTBSY)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dysink_deploy.errors import DysinkError
from dysink_deploy.serving.cli import serve_main
from dysink_deploy.serving.server import TritonServer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")

STANDIN = textwrap.dedent('''\
    #!{python}
    import json, os, signal, socket, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    fail = os.environ.get("STANDIN_FAIL")            # pretend this port was taken after dysink-serve's check
    if fail:
        print(f"E1203 grpc_server.cc: Failed to bind to address 127.0.0.1:{{args[fail + '-port']}}: in use", flush=True)
        sys.exit(1)
    http_addr = args.get("http-address", "0.0.0.0")    # tritonserver's defaults: every interface
    bound = {{}}
    try:
        for kind in ("grpc", "metrics"):
            s = socket.socket()
            s.bind((args.get(kind + "-address", "0.0.0.0" if kind == "grpc" else http_addr), int(args[kind + "-port"])))
            s.listen()
            bound[kind] = s.getsockname()
        class Ready(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()
            def log_message(self, *a):
                pass
        http = HTTPServer((http_addr, int(args["http-port"])), Ready)
        bound["http"] = http.server_address
    except OSError as exc:
        print(f"E0000 standin: failed to bind: {{exc}}", flush=True)
        sys.exit(1)
    with open(os.environ["STANDIN_RECORD"], "w") as f:
        json.dump({{"args": args, "bound": bound, "pid": os.getpid()}}, f)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    http.serve_forever()
''')


@pytest.fixture
def triton(tmp_path, monkeypatch):
    """(binary, repo, record path): the stand-in laid out as tritonserver's install (bin/, backends/python/,
    python_backend_stubs/X.Y/), and an empty repository."""
    root = tmp_path / "tritonserver"
    (root / "bin").mkdir(parents=True)
    (root / "backends" / "python").mkdir(parents=True)
    binary = root / "bin" / "tritonserver"
    binary.write_text(STANDIN.format(python=sys.executable))
    binary.chmod(0o755)
    stubs = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    stubs.mkdir(parents=True)
    (stubs / "triton_python_backend_stub").write_bytes(Path(shutil.which("true")).read_bytes() + b"\0new stub")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dysink_repo.json").write_text("{}")
    record = tmp_path / "record.json"
    monkeypatch.setenv("STANDIN_RECORD", str(record))
    return binary, repo, record


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_it_listens_on_loopback_only_unless_told(triton):
    binary, repo, record = triton
    with TritonServer(str(repo), str(binary), grpc_port=0, http_port=0, timeout_s=30):
        got = json.loads(record.read_text())
    assert {k: v[0] for k, v in got["bound"].items()} == {"grpc": "127.0.0.1", "http": "127.0.0.1",
                                                           "metrics": "127.0.0.1"}, got
    for kind in ("grpc", "http", "metrics"):
        assert got["args"][f"{kind}-address"] == "127.0.0.1"
    with TritonServer(str(repo), str(binary), grpc_port=0, http_port=0, timeout_s=30, host="0.0.0.0") as server:
        got = json.loads(record.read_text())
        assert server.grpc_url.startswith("127.0.0.1:")            # where a client on this machine connects
    assert {v[0] for v in got["bound"].values()} == {"0.0.0.0"}, got


def test_host_is_an_option_and_documented():
    res = CliRunner().invoke(serve_main, ["--help"])
    assert "--host" in res.output and "127.0.0.1" in res.output
    doc = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    assert "--host" in doc and "0.0.0.0" in doc and "authentication" in doc


def _serve(triton, *args):
    binary, repo, _ = triton
    return CliRunner().invoke(serve_main, ["--repo", str(repo), "--tritonserver", str(binary), *map(str, args)])


def _one_error_line(res, needle):
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("args, needle", [
    (["--http-port", "70000"], "--http-port must lie in 1..65535 (0: a free one), got 70000"),
    (["--grpc-port", "-1"], "--grpc-port must lie in 1..65535"),
    (["--grpc-port", "9123", "--http-port", "9123"], "--grpc-port and --http-port are both 9123"),
    (["--host", "no such host!"], "--host must be an IPv4 address or a host name"),
    (["--host", "::1"], "IPv6 addresses are not supported"),
    (["--host", "203.0.113.7", "--grpc-port", "0", "--http-port", "0"], "is not an address of this machine"),
])
def test_an_invalid_port_or_host_is_one_line(triton, args, needle):
    res = _serve(triton, *args)
    _one_error_line(res, needle)
    assert not triton[2].exists(), "nothing was started"


def test_a_taken_port_is_named_before_the_launch(triton):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = _serve(triton, "--grpc-port", port, "--http-port", "0")
    _one_error_line(res, f"port {port} (--grpc-port) on 127.0.0.1 is in use by another process")
    assert not triton[2].exists(), "nothing was started"


def test_a_port_taken_during_the_launch_is_named(triton, monkeypatch):
    monkeypatch.setenv("STANDIN_FAIL", "http")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DysinkError) as exc:
        TritonServer(str(triton[1]), str(triton[0]), grpc_port=0, http_port=port, timeout_s=30).start()
    assert f"port {port} (--http-port)" in str(exc.value) and "\n" not in str(exc.value)


def test_the_server_dies_with_its_parent_even_on_sigkill(triton):
    binary, repo, record = triton
    code = ("import sys, time\n"
            "from dysink_deploy.serving.server import TritonServer\n"
            f"s = TritonServer({str(repo)!r}, {str(binary)!r}, grpc_port=0, http_port=0, timeout_s=30).start()\n"
            "print(s.proc.pid, flush=True)\n"
            "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ)
    child = None
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()                                     # SIGKILL: no cleanup code of ours runs
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "tritonserver outlived the dysink-serve that started it"
    finally:
        parent.kill()
        if child is not None:
            _kill(child)


def test_a_second_server_does_not_write_over_the_running_stub(triton):
    binary, repo, _ = triton
    installed = binary.parent.parent / "backends" / "python" / "triton_python_backend_stub"
    shutil.copyfile(shutil.which("sleep"), installed)     # the stub a running server executes
    installed.chmod(0o755)
    running = subprocess.Popen([str(installed), "60"])
    try:
        time.sleep(0.2)
        server = TritonServer(str(repo), str(binary), grpc_port=0, http_port=0, timeout_s=30)   # installs the stub
        want = next((binary.parent.parent / "python_backend_stubs").glob("*/triton_python_backend_stub")).read_bytes()
        assert installed.read_bytes() == want and os.access(installed, os.X_OK)
        assert running.poll() is None, "the running executable was not touched"
        assert not [p for p in installed.parent.iterdir() if p.name.startswith(".")], "no temporary left"
        server.stop()
    finally:
        running.kill()
        running.wait()
