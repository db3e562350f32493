"""`dysink-serve`: start tritonserver on a generated repository, wait until it is ready, print the
endpoints, stop it cleanly on SIGINT / SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..errors import DysinkError

BUNDLED = Path.home() / ".cache" / "dysink-deploy" / "tritonserver"


def find_tritonserver(explicit: str | None = None) -> tuple[Path, Path | None]:
    """(tritonserver binary, backend directory or None for the binary's default). Order: --tritonserver,
    PATH, the copy `dysink-serve --fetch-server` unpacked from PyPI's nvidia-pytriton wheel."""
    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    on_path = shutil.which("tritonserver")
    if on_path:
        candidates.append(Path(on_path))
    candidates.append(BUNDLED / "pytriton" / "tritonserver" / "bin" / "tritonserver")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            backends = c.parent.parent / "backends"
            return c, (backends if (backends / "python").is_dir() else None)
    raise DysinkError("no tritonserver found: install NVIDIA's Triton (the container, or a release), put it on "
                      "PATH or pass --tritonserver BIN; on x86-64 Linux `dysink-serve --fetch-server` unpacks the "
                      "one PyPI's nvidia-pytriton wheel bundles")


def fetch_server(dest: Path = BUNDLED, version: str = "0.7.0") -> Path:
    """Unpack tritonserver, its Python backend and libraries from the nvidia-pytriton wheel (pip download,
    no install: that package pins numpy < 2)."""
    import tempfile
    import zipfile

    binary = dest / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if binary.is_file():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                               f"nvidia-pytriton=={version}"], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("nvidia_pytriton-*.whl"))
        if proc.returncode or not wheels:
            raise DysinkError(f"could not download nvidia-pytriton=={version} from PyPI "
                              f"({(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no wheel']})")
        staging = Path(tempfile.mkdtemp(prefix=".tritonserver-", dir=dest.parent if dest.parent.exists() else None))
        with zipfile.ZipFile(wheels[0]) as zf:
            for info in zf.infolist():
                if info.filename.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/")):
                    zf.extract(info, staging)
                    mode = info.external_attr >> 16
                    if mode:
                        os.chmod(staging / info.filename, mode)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
    for stub in (dest / "pytriton" / "tritonserver").rglob("triton_python_backend_stub"):
        stub.chmod(0o755)
    binary.chmod(0o755)
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """A running tritonserver (context manager): .grpc_url, .http_url; stopped on exit."""

    def __init__(self, repo: str, binary: str | None = None, grpc_port: int | None = None,
                 http_port: int | None = None, log_file: str | None = None, timeout_s: float = 180.0):
        repo_path = Path(repo)
        if not (repo_path / "dysink_repo.json").is_file():
            raise DysinkError(f"--repo {repo} is not a repository from dysink-export triton-repo")
        self.binary, backends = find_tritonserver(binary)
        self.grpc_port, self.http_port = grpc_port or free_port(), http_port or free_port()
        self.metrics_port = free_port()
        cmd = [str(self.binary), f"--model-repository={repo_path.resolve()}", f"--grpc-port={self.grpc_port}",
               f"--http-port={self.http_port}", f"--metrics-port={self.metrics_port}", "--log-verbose=0",
               "--exit-on-error=true", "--disable-auto-complete-config", "--exit-timeout-secs=5"]
        if backends is not None:
            cmd.append(f"--backend-directory={backends}")
            stubs = backends.parent / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
            if (stubs / "triton_python_backend_stub").is_file():
                # the stub for this Python: copy it where the python backend looks for it
                shutil.copyfile(stubs / "triton_python_backend_stub", backends / "python" / "triton_python_backend_stub")
                (backends / "python" / "triton_python_backend_stub").chmod(0o755)
        self.cmd = cmd
        self.log = open(log_file, "wb") if log_file else subprocess.DEVNULL
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self) -> "TritonServer":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([p for p in sys.path if p and os.path.isdir(p)])}
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DysinkError(f"tritonserver exited with code {self.proc.returncode} while starting "
                                  "(see its log: dysink-serve --log FILE)")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise DysinkError(f"tritonserver was not ready after {self.timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.log not in (None, subprocess.DEVNULL):
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
