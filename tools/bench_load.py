"""Envelopes and the ingest load client of ``tools/bench.py`` (stdlib only).

The load client runs in its own process, so the benchmark's fake upstream (in the parent) does
not share a GIL with the clients whose latency it measures::

    python -m tools.bench_load --port 5333 --kind sdk --dsn http://KEY@127.0.0.1:1/42 \
        --threads 4 --posts 500

prints one JSON object: per-post latencies (ms, in completion order), status counts, wall time.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import socket
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from tools.netutil import BodyError, read_chunked

SDK_NAME = "sentry.python.aws_lambda"
SDK_VERSION = "2.75.0"
EVENT_TARGET_BYTES = 1024  # the serialized event payload, before compression
MAX_POSTS = 100_000
MAX_LINE = 65537
MAX_HEADER_LINES = 100
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000000Z"


def event_payload(event_id: str, marker: str = "", target: int = EVENT_TARGET_BYTES) -> bytes:
    """A sentry-python-like error event (handled ValueError in a Lambda handler) of ~``target`` bytes."""
    event: Dict[str, Any] = {
        "event_id": event_id,
        "level": "error",
        "platform": "python",
        "timestamp": _now_iso(),
        "environment": "bench",
        "server_name": "169.254.10.1",
        "sdk": {"name": SDK_NAME, "version": SDK_VERSION},
        "exception": {"values": [{
            "type": "ValueError",
            "value": "sample error for request %s" % marker,
            "mechanism": {"type": "generic", "handled": True},
            "stacktrace": {"frames": [
                {"filename": "app.py", "abs_path": "/var/task/app.py", "function": "handler",
                 "module": "app", "lineno": 52, "in_app": True,
                 "context_line": "        event_id = _capture_sample_error(request_id)"},
                {"filename": "app.py", "abs_path": "/var/task/app.py", "function": "_capture_sample_error",
                 "module": "app", "lineno": 44, "in_app": True,
                 "context_line": "        raise ValueError(f\"sample error for request {request_id}\")"},
            ]},
        }]},
        "contexts": {"runtime": {"name": "CPython", "version": "3.11.7"},
                     "trace": {"trace_id": uuid.uuid4().hex, "span_id": uuid.uuid4().hex[:16], "op": "function.aws"}},
        "extra": {"lambda": {"function_name": "bench-function", "aws_request_id": marker,
                             "invoked_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:bench-function"}},
        "tags": {"aws_region": "us-east-1"},
    }
    raw = json.dumps(event, separators=(",", ":")).encode()
    pad = target - len(raw) - len(',"fingerprint":[""]')
    if pad > 0:
        event["fingerprint"] = ["x" * pad]
        raw = json.dumps(event, separators=(",", ":")).encode()
    return raw


def envelope(event_id: str, marker: str = "", dsn: Optional[str] = None) -> bytes:
    """An uncompressed envelope with one event item; ``dsn`` in the header makes it tunnel-ready."""
    header: Dict[str, Any] = {"event_id": event_id, "sent_at": _now_iso(),
                              "sdk": {"name": SDK_NAME, "version": SDK_VERSION}}
    if dsn:
        header["dsn"] = dsn
    payload = event_payload(event_id, marker)
    item = {"type": "event", "content_type": "application/json", "length": len(payload)}
    return (json.dumps(header, separators=(",", ":")).encode() + b"\n"
            + json.dumps(item, separators=(",", ":")).encode() + b"\n" + payload + b"\n")


def sdk_request(dsn: str, event_id: str, marker: str = "") -> Tuple[str, Dict[str, str], bytes]:
    """(path, headers, body) as sentry-python posts an error: gzip'd envelope with X-Sentry-Auth."""
    parts = urlsplit(dsn)
    project = parts.path.strip("/").rsplit("/", 1)[-1]
    headers = {
        "Content-Type": "application/x-sentry-envelope",
        "Content-Encoding": "gzip",
        "User-Agent": "%s/%s" % (SDK_NAME, SDK_VERSION),
        "X-Sentry-Auth": "Sentry sentry_key=%s, sentry_version=7, sentry_client=%s/%s"
                         % (parts.username, SDK_NAME, SDK_VERSION),
    }
    return "/api/%s/envelope/" % project, headers, gzip.compress(envelope(event_id, marker), 6)


def tunnel_request(dsn: str, event_id: str, marker: str = "") -> Tuple[str, Dict[str, str], bytes]:
    """(path, headers, body) for a tunnel (``/envelope``): plain envelope, DSN in its header."""
    return "/envelope", {"Content-Type": "application/x-sentry-envelope"}, envelope(event_id, marker, dsn)


class RawConnection:
    """A keep-alive HTTP/1.1 client on a plain socket: pre-built requests, minimal response parsing.

    Its own cost per post is a fraction of ``http.client``'s (which parses every response's
    headers with ``email.parser``), so the latency measured is the server's, not the client's.
    """

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((b"127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def exchange(self, request: bytes) -> Tuple[int, bool]:
        """Send one request, read its response; (status, server closes the connection)."""
        self.sock.sendall(request)
        status_line = self.reader.readline(MAX_LINE)
        if not status_line:
            raise ConnectionError("server closed the connection")
        length = 0
        close = chunked = False
        for _ in range(MAX_HEADER_LINES):
            line = self.reader.readline(MAX_LINE)
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ConnectionError("server closed the connection mid-headers")
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        try:
            if chunked:  # Node's http server answers res.writeHead() + res.end(body) this way
                read_chunked(self.reader, MAX_RESPONSE_BYTES)
            elif len(self.reader.read(length)) != length:
                raise ConnectionError("server closed the connection mid-body")
        except BodyError as exc:
            raise ConnectionError("bad chunked response: %s" % exc) from None
        return int(status_line.split(b" ", 2)[1]), close

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def raw_request(path: str, headers: Dict[str, str], body: bytes) -> bytes:
    """The bytes of one keep-alive POST."""
    lines = ["POST %s HTTP/1.1" % path, "Host: 127.0.0.1", "Content-Length: %d" % len(body)]
    lines += ["%s: %s" % item for item in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def run_load(port: int, kind: str, dsn: str, threads: int, posts: int, timeout: float = 30.0,
             client_kind: str = "raw") -> Dict[str, Any]:
    """``threads`` keep-alive connections, ``posts`` POSTs each; per-post latency measured client side.

    ``client_kind`` ``raw`` (default): RawConnection; ``http.client``: the stdlib client, as SDKs
    built on it (or on urllib3) pay for it.
    """
    make = sdk_request if kind == "sdk" else tunnel_request
    work = [[make(dsn, uuid.uuid4().hex, "load-%d-%d" % (t, i)) for i in range(min(posts, MAX_POSTS))]
            for t in range(threads)]
    if client_kind == "raw":
        return _run_raw(port, [[raw_request(*w) for w in per] for per in work], timeout)
    latencies: List[List[float]] = [[] for _ in range(threads)]
    statuses: List[Dict[int, int]] = [{} for _ in range(threads)]
    errors = [0] * threads
    barrier = threading.Barrier(threads + 1)
    give_up = [time.monotonic() + timeout]

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.connect()  # connect before the barrier: every post rides a warm keep-alive connection
        barrier.wait()
        perf = time.perf_counter
        for path, headers, body in work[index]:
            if time.monotonic() > give_up[0]:
                errors[index] += 1
                break
            t0 = perf()
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                errors[index] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            latencies[index].append((perf() - t0) * 1000.0)
            statuses[index][resp.status] = statuses[index].get(resp.status, 0) + 1
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.close()

    return _drive(client, threads, barrier, timeout, latencies, statuses, errors)


def _run_raw(port: int, work: List[List[bytes]], timeout: float) -> Dict[str, Any]:
    threads = len(work)
    latencies: List[List[float]] = [[] for _ in range(threads)]
    statuses: List[Dict[int, int]] = [{} for _ in range(threads)]
    errors = [0] * threads
    barrier = threading.Barrier(threads + 1)
    give_up = time.monotonic() + timeout

    def client(index: int) -> None:
        conn = RawConnection(port)
        barrier.wait()
        perf = time.perf_counter
        lat = latencies[index]
        st = statuses[index]
        for request in work[index]:
            if time.monotonic() > give_up:
                errors[index] += 1
                break
            t0 = perf()
            try:
                status, close = conn.exchange(request)
            except (OSError, ValueError, IndexError):  # ValueError/IndexError: a reply we could not parse
                errors[index] += 1
                conn.close()
                conn = RawConnection(port)
                continue
            lat.append((perf() - t0) * 1000.0)
            st[status] = st.get(status, 0) + 1
            if close:
                conn.close()
                conn = RawConnection(port)
        conn.close()

    return _drive(client, threads, barrier, timeout, latencies, statuses, errors)


def _drive(client: Any, threads: int, barrier: threading.Barrier, timeout: float, latencies: List[List[float]],
           statuses: List[Dict[int, int]], errors: List[int]) -> Dict[str, Any]:
    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait(timeout=10)
    t0 = time.perf_counter()
    for worker in workers:
        worker.join(timeout + 10)
    wall = time.perf_counter() - t0
    status_total: Dict[str, int] = {}
    for per in statuses:
        for code, count in per.items():
            status_total[str(code)] = status_total.get(str(code), 0) + count
    posts = sum(len(per) for per in latencies) + sum(errors)
    return {"latencies_ms": [x for per in latencies for x in per], "statuses": status_total,
            "errors": sum(errors), "wall_s": wall, "posts": posts}


def serve_null(port: int, max_s: float) -> None:
    """A keep-alive HTTP server answering ``200 {}`` at once (threads, like the extension's ingest),
    for measuring the load client's own share of the latency. Stops after ``max_s`` seconds."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.settimeout(1.0)

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        try:
            for _ in range(MAX_POSTS):
                if not reader.readline(65537):
                    return
                length = 0
                for _ in range(100):
                    line = reader.readline(65537)
                    if line in (b"\r\n", b"\n", b""):
                        break
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                reader.read(length)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        except OSError:
            pass
        finally:
            conn.close()

    print("ready", flush=True)
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=["sdk", "tunnel"], default="sdk")
    parser.add_argument("--dsn", default="http://0123456789abcdef0123456789abcdef@127.0.0.1:9/42",
                        help="DSN whose key and project the requests carry")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--posts", type=int, default=500, help="posts per thread")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--client", choices=["raw", "http.client"], default="raw")
    parser.add_argument("--serve-null", action="store_true", help="be the null server on --port instead (for --timeout s)")
    opts = parser.parse_args(argv)
    if opts.serve_null:
        serve_null(opts.port, opts.timeout)
        return 0
    result = run_load(opts.port, opts.kind, opts.dsn, max(1, opts.threads), max(1, opts.posts), opts.timeout,
                      opts.client)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
