"""Building blocks of ``tools/bench.py``: an Extensions API stub that timestamps calls, /proc
readers, launched extension processes, and the /opt directories of every contender.

Only loopback is used, and only processes started here are ever signalled (each leads its own
process group, and is signalled through that group while it is unreaped).
"""

from __future__ import annotations

import collections
import glob
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from tools.sandbox import EXTENSION_NAME, LAUNCHER, ROOT

EXTENSION_PREFIX = "/2020-01-01/extension"
TELEMETRY_PATH = "/2022-07-01/telemetry"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PEER_NAME = "sentry-extension"  # Sentry's Node extension registers under this fixed name
PEER_PORT = 9000                # ... and listens on this fixed port
PEER_PACKAGE = "@sentry/aws-serverless"
LONG_POLL_MAX_S = 120.0


# ------------------------------------------------------------------------------------- /proc


def cpu_ms(pid: int) -> Optional[float]:
    """CPU time (user+system) of the process, exited threads included, in ms (clock-tick resolution)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) * 1000.0 / CLK_TCK


def cpu_precise_ms(pid: int) -> Optional[float]:
    """CPU time of the live threads from schedstat (ns resolution), or ``cpu_ms`` without schedstat."""
    total = 0
    found = False
    for path in glob.glob("/proc/%d/task/*/schedstat" % pid):
        try:
            with open(path, "rb") as fh:
                total += int(fh.read().split()[0])
                found = True
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e6 if found else cpu_ms(pid)


def status_kib(pid: int, key: str) -> Optional[int]:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    try:
        with open("/proc/%d/status" % pid, "r", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# ------------------------------------------------------------------------- Extensions API stub


class ExtApiStub:
    """A real HTTP server on 127.0.0.1 answering the Extensions and Telemetry APIs.

    It records when ``register`` and the first ``event/next`` arrive (``time.monotonic()``), and
    samples the CPU time and RSS of ``watch_pid`` the moment that first ``next`` arrives (the
    extension is then blocked waiting for the answer). ``next`` is held until an event is pushed.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: Deque[bytes] = collections.deque()
        self.calls: List[Tuple[float, str]] = []
        self.register_t: Optional[float] = None
        self.first_next_t: Optional[float] = None
        self.first_next_cpu_ms: Optional[float] = None
        self.first_next_rss_kib: Optional[int] = None
        self.watch_pid: Optional[int] = None
        self.names: List[str] = []
        self.subscribed = False
        self._stopping = False
        self._server: Optional[http.server.ThreadingHTTPServer] = None

    @property
    def address(self) -> str:
        assert self._server is not None
        return "127.0.0.1:%d" % self._server.server_address[1]

    def start(self) -> "ExtApiStub":
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length > 0 else b""

            def _send(self, status: int, body: bytes, headers: Optional[Dict[str, str]] = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                now = time.monotonic()
                self._body()
                if self.path == EXTENSION_PREFIX + "/register":
                    with stub.cond:
                        stub.calls.append((now, "register"))
                        if stub.register_t is None:
                            stub.register_t = now
                        stub.names.append(self.headers.get("Lambda-Extension-Name") or "")
                    self._send(200, b'{"functionName":"bench-function","functionVersion":"$LATEST",'
                                    b'"handler":"app.handler"}',
                               {"Lambda-Extension-Identifier": str(uuid.uuid4())})
                else:  # init/error, exit/error
                    with stub.cond:
                        stub.calls.append((now, self.path.rsplit("/", 2)[-2] + "/error"))
                    self._send(202, b'{"status":"OK"}')

            def do_PUT(self) -> None:
                now = time.monotonic()
                self._body()
                with stub.cond:
                    stub.calls.append((now, "telemetry"))
                    stub.subscribed = True
                self._send(200, b"OK")

            def do_GET(self) -> None:
                now = time.monotonic()
                if self.path != EXTENSION_PREFIX + "/event/next":
                    self._send(404, b'{"errorType":"NotFound"}')
                    return
                pid = stub.watch_pid
                first = False
                with stub.cond:
                    stub.calls.append((now, "next"))
                    if stub.first_next_t is None:
                        stub.first_next_t = now
                        first = True
                if first and pid is not None:
                    cpu, rss = cpu_precise_ms(pid), status_kib(pid, "VmRSS")
                    with stub.cond:
                        stub.first_next_cpu_ms, stub.first_next_rss_kib = cpu, rss
                        stub.cond.notify_all()
                event = stub._take_event()
                if event is None:
                    self.close_connection = True
                    self._send(500, b'{"errorType":"Extension.SandboxGone"}')
                else:
                    self._send(200, event, {"Lambda-Extension-Event-Identifier": str(uuid.uuid4())})

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up on its long poll (killed, or shut down)

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="bench-ext-api", daemon=True).start()
        return self

    def _take_event(self) -> Optional[bytes]:
        deadline = time.monotonic() + LONG_POLL_MAX_S
        with self.cond:
            while not self.events:
                remaining = deadline - time.monotonic()
                if self._stopping or remaining <= 0:
                    return None
                self.cond.wait(min(remaining, 1.0))
            return self.events.popleft()

    def push_shutdown(self, window_ms: int = 2000) -> None:
        """Answer the pending (or next) ``event/next`` with SHUTDOWN."""
        event = {"eventType": "SHUTDOWN", "shutdownReason": "spindown",
                 "deadlineMs": int(time.time() * 1000) + window_ms}
        with self.cond:
            self.events.append(json.dumps(event).encode())
            self.cond.notify_all()

    def wait_first_next(self, timeout: float) -> bool:
        """Wait until the first ``next`` arrived and was sampled."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.first_next_t is None or (self.watch_pid is not None and self.first_next_cpu_ms is None):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(min(remaining, 0.5))
            return True

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "ExtApiStub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ------------------------------------------------------------------------ launched processes


class Launched:
    """An extension executable started as Lambda starts it: exec'd from ``<opt>/extensions``."""

    def __init__(self, path: Path, env: Dict[str, str], log_path: Path, on_spawn: Optional[Callable[[int], None]] = None) -> None:
        self.path = path
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.spawn_t = time.monotonic()
        self.popen = subprocess.Popen([str(path)], cwd=str(path.parent.parent), env=env, stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        self.pid = self.popen.pid
        if on_spawn is not None:
            on_spawn(self.pid)

    def wait_exit(self, timeout: float) -> Optional[int]:
        try:
            return self.popen.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the process group this process leads (only while it is unreaped), then reap it."""
        if self.popen.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._log.close()

    def output(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""


def base_env(api_address: str, function_name: str = "bench-function") -> Dict[str, str]:
    """The environment Lambda gives an extension (as tools/emulator.py builds it)."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ") if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update({
        "AWS_LAMBDA_RUNTIME_API": api_address,
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
    })
    return env


def wait_port(port: int, timeout: float) -> bool:
    """Poll until 127.0.0.1:``port`` accepts a connection (bounded, 5 ms apart)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.005)
    return False


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (SO_REUSEADDR, as servers bind:
    connections of an earlier run lingering in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# ------------------------------------------------------------------------------ /opt layouts


def opt_floor(base: Path, python: str) -> Path:
    """``<base>/opt/extensions/floor-extension``: tools/floor_extension.py with ``#!<python> -IS``."""
    opt = base / "opt"
    (opt / "extensions").mkdir(parents=True, exist_ok=True)
    source = (ROOT / "tools" / "floor_extension.py").read_text()
    target = opt / "extensions" / "floor-extension"
    target.write_text("#!%s -IS\n%s" % (python, source))
    target.chmod(0o755)
    return opt


def fresh_layer_zip(out_dir: Path, offline: bool, log: Callable[[str], None]) -> Optional[Path]:
    """A layer zip of this tree built now by tools/build_layer.py (bytecode for this interpreter only),
    or None (no build_layer, or its pinned wheels are not cached and ``offline``, or the build failed)."""
    try:
        from tools import build_layer
    except ImportError:
        return None
    try:
        wheels = build_layer.DEFAULT_WHEELS
        if offline and not all((Path(wheels) / dep.wheel).exists() for dep in build_layer.VENDORED):
            log("layer: build_layer's pinned wheels are not cached in %s (--offline): assembling instead" % wheels)
            return None
        result = build_layer.build(out_dir, wheels, "%d.%d" % sys.version_info[:2], [sys.executable])
        return Path(result.path)
    except Exception as exc:  # another tool's failure must not stop the benchmark
        log("layer: tools/build_layer.py failed (%s): assembling instead" % exc)
        return None


def opt_layer(base: Path, layer_zip: Optional[Path] = None) -> Tuple[Path, str]:
    """An /opt as the layer lays it out (the launcher then runs ``python -IS``); returns (opt, origin).

    From ``layer_zip`` when given, else assembled from this tree: ``extensions/<name>`` (the
    launcher), ``sentry-lambda-extension/`` with ``sentry_ext``, ``urllib3`` and ``certifi`` copied
    from the interpreter's site-packages, byte-compiled as a layer build would ship them.
    """
    opt = base / "opt"
    if layer_zip is not None:
        with zipfile.ZipFile(layer_zip) as zf:
            zf.extractall(opt)
        for path in (opt / "extensions").iterdir():
            path.chmod(0o755)
        has_pyc = any(opt.rglob("*.pyc"))
        shown = os.path.relpath(layer_zip, ROOT) if str(layer_zip).startswith(str(ROOT)) else layer_zip.name
        return opt, "%s (%s .pyc)" % (shown, "with" if has_pyc else "no")
    import certifi
    import urllib3

    (opt / "extensions").mkdir(parents=True, exist_ok=True)
    shutil.copy2(LAUNCHER, opt / "extensions" / EXTENSION_NAME)
    lib = opt / "sentry-lambda-extension"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "sentry_ext", lib / "sentry_ext", ignore=ignore)
    for module in (urllib3, certifi):
        src = Path(module.__file__).parent  # type: ignore[arg-type]
        shutil.copytree(src, lib / src.name, ignore=ignore)
    import compileall

    compileall.compile_dir(str(lib), quiet=1, workers=1)
    return opt, "assembled from the source tree (byte-compiled)"


# ---------------------------------------------------------------------------- the Node peer


def find_peer(cache: Path, offline: bool, log: Callable[[str], None]) -> Tuple[Optional[Path], str]:
    """``build/lambda-extension`` of ``@sentry/aws-serverless`` (npm pack into ``cache``); (dir, note)."""
    if shutil.which("node") is None:
        return None, "node is not on PATH"
    found = sorted(cache.glob("*/package/build/lambda-extension/index.mjs"))
    if not found:
        if offline:
            return None, "%s is not in %s and --offline was given" % (PEER_PACKAGE, cache)
        npm = shutil.which("npm")
        if npm is None:
            return None, "npm is not on PATH to fetch %s" % PEER_PACKAGE
        cache.mkdir(parents=True, exist_ok=True)
        log("fetching %s with npm pack into %s ..." % (PEER_PACKAGE, cache))
        try:
            proc = subprocess.run([npm, "pack", PEER_PACKAGE, "--pack-destination", str(cache), "--silent"],
                                  cwd=str(cache), capture_output=True, text=True, timeout=180)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, "npm pack failed: %s" % exc
        tgz = [line.strip() for line in proc.stdout.splitlines() if line.strip().endswith(".tgz")]
        if proc.returncode != 0 or not tgz:
            return None, "npm pack failed: %s" % (proc.stderr.strip()[-300:] or proc.stdout.strip()[-300:])
        archive = cache / tgz[-1]
        dest = cache / archive.name[:-len(".tgz")]
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tf.extractall(dest)
        found = sorted(cache.glob("*/package/build/lambda-extension/index.mjs"))
        if not found:
            return None, "%s has no build/lambda-extension/index.mjs" % archive.name
    ext_dir = found[-1].parent
    try:
        version = json.loads((ext_dir.parent.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        version = "?"
    return ext_dir, "%s %s, node %s" % (PEER_PACKAGE, version, _node_version())


def _node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def opt_peer(base: Path, ext_dir: Path) -> Path:
    """``<base>/opt`` as the npm package's layer lays it out: ``extensions/sentry-extension`` (its bash
    launcher, with ``/opt/`` pointed at this directory) and ``sentry-extension/index.mjs``."""
    opt = base / "opt"
    (opt / "extensions").mkdir(parents=True, exist_ok=True)
    (opt / PEER_NAME).mkdir(parents=True, exist_ok=True)
    launcher = (ext_dir / PEER_NAME).read_text().replace('"/opt/', '"%s/' % opt)
    target = opt / "extensions" / PEER_NAME
    target.write_text(launcher)
    target.chmod(0o755)
    script = opt / PEER_NAME / "index.mjs"
    shutil.copy2(ext_dir / "index.mjs", script)
    script.chmod(0o755)
    return opt


def median(values: List[float]) -> Optional[float]:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def percentile(values: List[float], pct: float) -> Optional[float]:
    """Nearest-rank percentile."""
    vals = sorted(values)
    if not vals:
        return None
    rank = max(1, min(len(vals), int(-(-pct * len(vals) // 100))))
    return vals[rank - 1]


def machine() -> Dict[str, Any]:
    """nproc, CPU model, memory, Python, kernel, date."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": nproc,
        "cpu": cpu,
        "mem_mib": mem,
        "python": "%s (%s)" % (sys.version.split()[0], sys.executable),
        "kernel": os.uname().release,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "loadavg": loadavg(),
    }


def loadavg() -> Optional[float]:
    """The 1-minute load average (other work on the machine skews every figure)."""
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
