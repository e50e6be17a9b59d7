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
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

SDK_NAME = "sentry.python.aws_lambda"
SDK_VERSION = "2.75.0"
EVENT_TARGET_BYTES = 1024  # the serialized event payload, before compression
MAX_POSTS = 100_000


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


def run_load(port: int, kind: str, dsn: str, threads: int, posts: int, timeout: float = 30.0) -> Dict[str, Any]:
    """``threads`` keep-alive connections, ``posts`` POSTs each; per-post latency measured client side."""
    make = sdk_request if kind == "sdk" else tunnel_request
    work = [[make(dsn, uuid.uuid4().hex, "load-%d-%d" % (t, i)) for i in range(min(posts, MAX_POSTS))]
            for t in range(threads)]
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
    return {"latencies_ms": [x for per in latencies for x in per], "statuses": status_total,
            "errors": sum(errors), "wall_s": wall, "posts": threads * posts}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=["sdk", "tunnel"], default="sdk")
    parser.add_argument("--dsn", required=True, help="DSN whose key and project the requests carry")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--posts", type=int, default=500, help="posts per thread")
    parser.add_argument("--timeout", type=float, default=30.0)
    opts = parser.parse_args(argv)
    result = run_load(opts.port, opts.kind, opts.dsn, max(1, opts.threads), max(1, opts.posts), opts.timeout)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
