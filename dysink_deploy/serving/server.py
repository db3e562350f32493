"""`dysink-serve`: start tritonserver on a generated repository, wait until it is ready, print the
endpoints, stop it cleanly on SIGINT / SIGTERM.

What the server exposes and for how long:
- it listens on `host` only (default 127.0.0.1, this machine): HTTP, gRPC and metrics, through
  tritonserver's --http-address / --grpc-address / --metrics-address (their default is 0.0.0.0,
  every interface); docs/serving.md says what a wider --host exposes;
- it dies with its parent: on Linux the child asks the kernel for SIGTERM when the process that
  started it ends (prctl PR_SET_PDEATHSIG), so a SIGKILLed dysink-serve leaves no tritonserver;
- its ports are checked before it starts (range, distinct, free on `host`), and a start that fails
  anyway (a port taken in between) names the port.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


DEFAULT_HOST = "127.0.0.1"
MAX_PORT = 65535


def check_host(host: object) -> str:
    """An IPv4 address or a host name of this machine that resolves to one (tritonserver's IPv6
    addresses take another syntax, not written here)."""
    if not isinstance(host, str) or not host.strip() or any(c.isspace() or c in "[]/" for c in host):
        raise DysinkError(f"--host must be an IPv4 address or a host name, e.g. 127.0.0.1 (this machine only) or "
                          f"0.0.0.0 (every interface), got {host!r}")
    try:
        if ipaddress.ip_address(host).version == 6:
            raise DysinkError(f"--host {host}: IPv6 addresses are not supported by dysink-serve here; use an IPv4 "
                              "address (127.0.0.1, 0.0.0.0 or one of this machine's)")
    except ValueError:
        try:
            socket.getaddrinfo(host, None, socket.AF_INET)
        except (socket.gaierror, UnicodeError):
            raise DysinkError(f"--host {host}: no IPv4 address of that name; give an IPv4 address, e.g. "
                              "127.0.0.1") from None
    return host


def check_ports(ports: dict[str, int | None]) -> None:
    """Each port None / 0 (a free one is chosen) or in 1..65535, and the given ones distinct."""
    for flag, port in ports.items():
        if port is None:
            continue
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= MAX_PORT:
            raise DysinkError(f"{flag} must lie in 1..{MAX_PORT} (0: a free one), got {port!r}")
    given = [(f, p) for f, p in ports.items() if p]
    for i, (flag, port) in enumerate(given):
        for other, same in given[i + 1:]:
            if port == same:
                raise DysinkError(f"{flag} and {other} are both {port}; give them different ports")


def _probe(host: str, port: int) -> OSError | None:
    """Can a server bind (host, port) now? (SO_REUSEADDR, as servers set it: a port in TIME_WAIT is
    free, one another process listens on is not.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_problem(flag: str, host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} ({flag}) on {host} is in use by another process; stop it or choose another {flag}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"port {port} ({flag}) needs privileges to bind (ports below 1024); choose a port >= 1024"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host} is not an address of this machine; use 127.0.0.1, 0.0.0.0 or one of its addresses"
    return f"cannot bind port {port} ({flag}) on {host} ({exc.strerror or exc})"


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the parent ends, even by SIGKILL. The kernel
    ties it to the thread that started the child: start the server from a thread that outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)        # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:                                  # the parent died before prctl: exit now
        os._exit(1)


def install_stub(stubs: Path, backend_dir: Path) -> None:
    """The python backend's stub for this Python, put where the backend looks for it. Never written
    in place: a running tritonserver may be executing the current one (opening it for writing
    fails with ETXTBSY); a copy under a temporary name is renamed over it (the running server keeps
    the file it has open), and nothing is done when the one there is already the same."""
    src, dst = stubs / "triton_python_backend_stub", backend_dir / "triton_python_backend_stub"
    data = src.read_bytes()
    try:
        if dst.is_file() and dst.stat().st_size == len(data) and dst.read_bytes() == data and os.access(dst, os.X_OK):
            return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=".triton_python_backend_stub.", dir=backend_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dst)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DysinkError(f"cannot install the python backend stub in {backend_dir} ({exc.strerror or exc}); "
                          "make that directory writable or pass --tritonserver with another install") from None


class TritonServer:
    """A running tritonserver (context manager): .grpc_url, .http_url; stopped on exit.

    host: the address HTTP, gRPC and metrics listen on (127.0.0.1: this machine only). Ports None
    or 0: free ones."""

    def __init__(self, repo: str, binary: str | None = None, grpc_port: int | None = None,
                 http_port: int | None = None, log_file: str | None = None, timeout_s: float = 180.0,
                 host: str = DEFAULT_HOST, metrics_port: int | None = None):
        repo_path = Path(repo)
        if not (repo_path / "dysink_repo.json").is_file():
            raise DysinkError(f"--repo {repo} is not a repository from dysink-export triton-repo")
        self.host = check_host(host)
        check_ports({"--grpc-port": grpc_port, "--http-port": http_port, "--metrics-port": metrics_port})
        self.binary, backends = find_tritonserver(binary)
        self.ports: dict[str, int] = {}
        for flag, port in (("--grpc-port", grpc_port), ("--http-port", http_port), ("--metrics-port", metrics_port)):
            if port:
                problem = _probe(self.host, port)
                if problem is not None:
                    raise DysinkError(_port_problem(flag, self.host, port, problem))
            else:
                try:
                    port = free_port(self.host)
                except OSError as exc:
                    raise DysinkError(_port_problem(flag, self.host, 0, exc)) from None
                while port in self.ports.values():
                    port = free_port(self.host)
            self.ports[flag] = port
        self.grpc_port, self.http_port = self.ports["--grpc-port"], self.ports["--http-port"]
        self.metrics_port = self.ports["--metrics-port"]
        cmd = [str(self.binary), f"--model-repository={repo_path.resolve()}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}", "--log-verbose=0",
               "--exit-on-error=true", "--disable-auto-complete-config", "--exit-timeout-secs=5"]
        if backends is not None:
            cmd.append(f"--backend-directory={backends}")
            stubs = backends.parent / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
            if (stubs / "triton_python_backend_stub").is_file():
                install_stub(stubs, backends / "python")
        self.cmd = cmd
        # The log goes to --log, or to a temporary file read when the server fails to start.
        self._log_path = Path(log_file) if log_file else None
        self._tmp_log = None if log_file else tempfile.NamedTemporaryFile(prefix="dysink-serve-", suffix=".log")
        self.log = open(log_file, "wb") if log_file else self._tmp_log
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def _connect_host(self) -> str:
        return "127.0.0.1" if self.host == "0.0.0.0" else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self._connect_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self._connect_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self._connect_host}:{self.metrics_port}"

    def start(self) -> "TritonServer":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([p for p in sys.path if p and os.path.isdir(p)])}
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True,
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DysinkError(self._start_failure())
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise DysinkError(f"tritonserver was not ready after {self.timeout_s:.0f} s")

    def _log_tail(self) -> list[str]:
        try:
            self.log.flush()
            path = self._log_path or Path(self._tmp_log.name)
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 8192))
                return f.read().decode("utf-8", "replace").splitlines()
        except (OSError, ValueError, AttributeError):
            return []

    def _start_failure(self) -> str:
        """Why tritonserver exited while starting, in one line: a port taken after our check (named),
        else its last error line."""
        tail = self._log_tail()
        for flag, port in self.ports.items():
            problem = _probe(self.host, port)
            said = any(str(port) in ln and ("bind" in ln.lower() or "in use" in ln.lower()) for ln in tail)
            if problem is not None or said:
                return _port_problem(flag, self.host, port, problem or OSError(errno.EADDRINUSE, "in use"))
        errors = [ln.strip() for ln in tail if ln.strip() and (ln.startswith("E") or "error" in ln.lower())]
        last = (errors or [ln.strip() for ln in tail if ln.strip()] or [""])[-1][:240]
        where = f"its log: {self._log_path}" if self._log_path else "dysink-serve --log FILE keeps its log"
        return (f"tritonserver exited with code {self.proc.returncode} while starting"
                + (f": {last}" if last else "") + f" ({where})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.log not in (None, subprocess.DEVNULL) and not self.log.closed:
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
