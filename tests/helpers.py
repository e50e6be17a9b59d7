"""Test helpers: constants, a live pipeline on loopback (and the ``pipelines`` fixture), HTTP utilities."""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from sentry_ext.config import load
from sentry_ext.delivery.flush import FlushControl
from sentry_ext.main import bind_listener
from sentry_ext.pipeline import Pipeline

KEY = "0123456789abcdef0123456789abcdef"  # the public key of every test DSN
PROJECT = "42"


def make_pipeline(upstream_dsn: str, start: bool = True, flush_control: Optional[FlushControl] = None,
                  **env: str) -> Pipeline:
    """A started pipeline on a free loopback port relaying to ``upstream_dsn``."""
    settings = {"SENTRY_DSN": upstream_dsn, "SENTRY_EXT_SPOOL_DIR": env.pop("spool", "/nonexistent")}
    settings.update(env)
    cfg = load(settings)
    assert cfg.active, cfg.problem
    sock = bind_listener("127.0.0.1", 0)
    pipeline = Pipeline(cfg, sock, None, flush_control)
    if start:
        pipeline.start()
    return pipeline


class FakeClock:
    """A settable clock for code that takes ``clock=``: it reads ``now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


StartPipeline = Callable[..., Pipeline]  # the type of the ``pipelines`` fixture


@pytest.fixture
def pipelines(request: pytest.FixtureRequest) -> Iterator[StartPipeline]:
    """``pipelines(dsn=None, **env)`` starts a pipeline relaying to ``dsn`` (default: the ``upstream``
    fixture's DSN); every pipeline started is stopped after the test. Registered in conftest."""
    made: List[Pipeline] = []

    def start(dsn: Optional[str] = None, **kwargs: Any) -> Pipeline:
        if dsn is None:
            dsn = request.getfixturevalue("upstream").dsn(KEY, PROJECT)
        pipeline = make_pipeline(dsn, **kwargs)
        made.append(pipeline)
        return pipeline

    yield start
    for pipeline in made:
        stop(pipeline)


def port_of(pipeline: Pipeline) -> int:
    return pipeline.server.server_address[1]


def post(port: int, path: str, body: bytes, headers: Optional[Dict[str, str]] = None,
         conn: Optional[http.client.HTTPConnection] = None) -> Tuple[int, Dict[str, str], dict]:
    """POST and return (status, headers, parsed JSON body)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data or b"{}")
    finally:
        if own:
            conn.close()


def health(port: int) -> Dict[str, Any]:
    """GET /health on ``port``: asserts it answers 200 and returns the parsed JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and _complete(out):
                break
        return out


def exchange(port: int, data: bytes, half_close: bool = True, timeout: float = 5.0) -> Tuple[bytes, bool]:
    """Send ``data`` (then EOF if ``half_close``); return (what came back, whether the server closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before reading everything
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return out, False
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
        return out, False


def proc_status(pid: int) -> Dict[str, int]:
    """Threads and VmRSS (KiB) of process ``pid``, from /proc."""
    out = {}
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith(("Threads:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def attr(log: Dict[str, Any], name: str) -> Any:
    """The value of attribute ``name`` of a log (an item of a ``log`` envelope item), or None."""
    return log["attributes"].get(name, {}).get("value")


class Errors(logging.Handler):
    """Collects ERROR records of the extension's loggers (an internal error is a bug found)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def envelope(event_id: str = "a" * 32, dsn: Optional[str] = None, item_type: str = "event",
             payload: bytes = b'{"message":"hi"}') -> bytes:
    header: Dict[str, str] = {"event_id": event_id}
    if dsn:
        header["dsn"] = dsn
    return (json.dumps(header).encode() + b"\n" + json.dumps({"type": item_type, "length": len(payload)}).encode()
            + b"\n" + payload + b"\n")


def auth(key: str = KEY) -> Dict[str, str]:
    return {"X-Sentry-Auth": "Sentry sentry_key=%s, sentry_version=7, sentry_client=test/1" % key,
            "Content-Type": "application/x-sentry-envelope", "User-Agent": "test/1"}


class FullDisk:
    """Stands in for the ``os`` module of ``sentry_ext.delivery.spool`` (monkeypatch it in): every file it
    opens for writing takes ``room`` bytes, then a write fails with ENOSPC as on a full /tmp
    (the bytes before it are on disk, as they would be). Everything else is the real ``os``."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.refused = 0  # writes that failed

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdopen(self, fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return _FullFile(os.fdopen(fd, mode, *args, **kwargs), self)


class _FullFile:
    def __init__(self, fh: Any, disk: FullDisk) -> None:
        self._fh = fh
        self._disk = disk
        self._size = 0

    def write(self, data: bytes) -> int:
        room = self._disk.room - self._size
        if len(data) > room:
            self._fh.write(data[:max(0, room)])
            self._size += max(0, room)
            self._disk.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._size += len(data)
        return self._fh.write(data)

    def __enter__(self) -> "_FullFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._fh.close()


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` every 10 ms until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def stop(pipeline: Pipeline) -> None:
    """Stop sender threads, the server and the telemetry listener (if any); their serve loops
    notice within their poll interval."""
    pipeline.forwarder.stop()
    threading.Thread(target=_shutdown, args=(pipeline,), daemon=True).start()


def _shutdown(pipeline: Pipeline) -> None:
    for server in (pipeline.server, pipeline.listener):
        if server is not None:
            server.shutdown()
            server.server_close()


def run_quick_bench(suite: str, out: Path, time_limit_s: float = 120) -> Dict[str, Any]:
    """``tools/bench.py <suite> --quick --out <out>`` with this interpreter; asserts it exits 0 and
    returns {"stdout": ..., "data": the JSON it wrote}."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "tools" / "bench.py"), suite, "--quick", "--out", str(out)],
                          cwd=str(root), capture_output=True, text=True, timeout=time_limit_s)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"stdout": proc.stdout, "data": json.loads(out.read_text())}
