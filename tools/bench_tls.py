"""What one upstream connection costs the client: the floor under the "connections closed" case.

    .venv/bin/python tools/bench_tls.py [--requests N] [--rounds R] [--chain]

The fake upstream (HTTPS, self-signed P-256 certificate as in ``tools/bench.py --cost``, no delay;
with ``--chain`` a public CA's shape instead: leaf and intermediate sent, RSA, the root trusted
among certifi's bundle) runs in a child process, so only
the client's work is counted: the CPU time (``time.thread_time``, user + system) of this thread per
request, medians over ``--rounds`` interleaved rounds of ``--requests`` each, for

- ``ssl, new connection``: ``socket.create_connection`` + a full TLS handshake with the ``ssl``
  module alone + one small envelope POST and its reply + close: the least any Python client pays
  for a request on a new connection;
- ``ssl, resumed session``: the same with the previous connection's TLS session offered;
- ``ssl, kept connection``: one POST and its reply on a connection kept open;
- ``ours, new connection`` and ``ours, kept connection``: ``Transport.send`` (urllib3, our TLS
  context), a one-connection pool whose connection is closed before each new-connection request;
  a new connection offers the last TLS session, as the extension's do.

"per new connection" is new minus kept: what a connection the upstream closed during a freeze adds to
the request sent on it. ``tools/bench.py --cost`` counts about 3 of them per thawed invocation in its
"closed" case, one per envelope: the replies come during the freeze, after which the upstream closes
the connection. So the closed case cannot go below the kept case + 3 x the ``ssl`` figure.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: make ``tools`` and ``sentry_ext`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.tlsutil import ca_chain, self_signed  # noqa: E402

SERVER = """
import sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from tools.fake_upstream import FakeUpstream
from tools.tlsutil import server_context
with FakeUpstream(tls=server_context(Path(sys.argv[1]), Path(sys.argv[2]))) as upstream:
    print(upstream.dsn(), flush=True)
    sys.stdin.read()
"""


def _envelope() -> bytes:
    payload = json.dumps({"message": "bench", "level": "info", "platform": "python"}).encode()
    return (json.dumps({"event_id": "b" * 32}).encode() + b"\n"
            + json.dumps({"type": "event", "length": len(payload)}).encode() + b"\n" + payload + b"\n")


class RawClient:
    """A keep-alive HTTP/1.1 client on the ``ssl`` module alone (the floor: no urllib3, no http.client)."""

    def __init__(self, host: str, port: int, path: str, auth: str, cafile: str) -> None:
        self.addr = (host, port)
        self.host = host
        self.context = ssl.create_default_context(cafile=cafile)
        body = _envelope()
        self.request = ("POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/x-sentry-envelope\r\n"
                        "X-Sentry-Auth: %s\r\nContent-Length: %d\r\n\r\n" % (path, host, port, auth, len(body))
                        ).encode("latin-1") + body
        self.sock: Optional[ssl.SSLSocket] = None
        self.session: Optional[ssl.SSLSession] = None
        self.resumed = 0

    def connect(self, resume: bool) -> None:
        self.close()
        raw = socket.create_connection(self.addr)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self.context.wrap_socket(raw, server_hostname=self.host,
                                             session=self.session if resume else None)
        self.resumed += int(self.sock.session_reused)

    def post(self) -> None:
        assert self.sock is not None
        self.sock.sendall(self.request)
        buf = b""
        for _ in range(100):  # bounded: a small reply comes in one or two reads
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the upstream closed the connection")
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                if len(rest) >= length:
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError("upstream answered %r" % head[:40])
                    self.session = self.sock.session  # TLS 1.3: the ticket came with the reply
                    return
        raise RuntimeError("no whole reply")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def per_request(action: Callable[[], None], count: int, pause_s: float = 0.0) -> float:
    """ms of this thread's CPU per call of ``action``, each call after ``pause_s`` asleep."""
    if not pause_s:
        start = time.thread_time()
        for _ in range(count):
            action()
        return (time.thread_time() - start) * 1000.0 / count
    total = 0.0
    for _ in range(count):
        time.sleep(pause_s)  # caches cool meanwhile, as in a freeze
        start = time.thread_time()
        action()
        total += time.thread_time() - start
    return total * 1000.0 / count


def measure(dsn: str, cafile: str, requests: int, rounds: int, pause_s: float = 0.0) -> Dict[str, List[float]]:
    from sentry_ext.config import load
    from sentry_ext.delivery.request import Request
    from sentry_ext.delivery.transport import Outcome, Transport

    parts = urlsplit(dsn)
    key, project = parts.username or "", parts.path.strip("/")
    auth = "Sentry sentry_version=7, sentry_key=%s" % key
    path = "/api/%s/envelope/" % project
    raw = RawClient(parts.hostname or "127.0.0.1", parts.port or 443, path, auth, cafile)
    transport = Transport(load({"SENTRY_DSN": dsn, "SSL_CERT_FILE": cafile, "SENTRY_EXT_MAX_INFLIGHT": "1",
                                "SENTRY_EXT_SENDERS": "1"}))
    req = Request(path, {"Content-Type": "application/x-sentry-envelope", "X-Sentry-Auth": auth}, _envelope(), key)

    def ours() -> None:
        result = transport.send(req)
        if result.outcome != Outcome.OK:
            raise RuntimeError("upstream: %s %s" % (result.status, result.error))

    def ours_new() -> None:
        transport.close_connections()
        ours()

    def raw_new(resume: bool) -> Callable[[], None]:
        def run() -> None:
            raw.connect(resume)
            raw.post()
        return run

    cases: List[Tuple[str, Callable[[], None], Optional[Callable[[], None]]]] = [
        ("ssl, new connection", raw_new(False), None),
        ("ssl, resumed session", raw_new(True), None),
        ("ssl, kept connection", raw.post, lambda: raw.connect(False)),
        ("ours, new connection", ours_new, None),
        ("ours, kept connection", ours, None),
    ]
    for _name, action, prepare in cases:  # warm-up: imports, the CA file, a first session
        if prepare is not None:
            prepare()
        for _ in range(5):
            action()
    results: Dict[str, List[float]] = {name: [] for name, _, _ in cases}
    for round_no in range(rounds):
        for name, action, prepare in (cases if round_no % 2 == 0 else list(reversed(cases))):
            if prepare is not None:
                prepare()
            results[name].append(per_request(action, requests, pause_s))
    raw.close()
    if raw.resumed == 0:
        results.pop("ssl, resumed session")  # the upstream gave no session to resume
    return results


def report(results: Dict[str, List[float]]) -> str:
    med = {name: statistics.median(values) for name, values in results.items()}
    lines = ["| client CPU per request (ms) | median | range |", "|---|---|---|"]
    for name, values in results.items():
        lines.append("| %s | %.3f | %.3f–%.3f |" % (name, med[name], min(values), max(values)))
    for who in ("ssl", "ours"):
        lines.append("| **%s: per new connection** (new − kept) | %.3f | |"
                     % (who, med["%s, new connection" % who] - med["%s, kept connection" % who]))
    if "ssl, resumed session" in med:
        lines.append("| **ssl: per resumed connection** (resumed − kept) | %.3f | |"
                     % (med["ssl, resumed session"] - med["ssl, kept connection"]))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per case and round (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--pause-ms", type=float, default=0.0,
                        help="sleep this long before each request, uncounted (caches cool as in a freeze; "
                             "default 0: a warm loop)")
    parser.add_argument("--chain", action="store_true",
                        help="a three-certificate RSA chain whose root is trusted among certifi's bundle "
                             "(default: the cost benchmark's self-signed P-256 certificate, trusted alone)")
    opts = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="sentry-ext-bench-tls-") as tmp:
        if opts.chain:
            import certifi
            cert, key, root = ca_chain(Path(tmp) / "chain")
            trusted = Path(tmp) / "trusted.pem"
            trusted.write_text(Path(certifi.where()).read_text() + root.read_text())
        else:
            cert, key = self_signed(Path(tmp))
            trusted = cert
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(cert), str(key), str(root)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            dsn = server.stdout.readline().strip()
            if not dsn:
                raise RuntimeError("the fake upstream did not start")
            started = time.monotonic()
            results = measure(dsn, str(trusted), opts.requests, opts.rounds, opts.pause_ms / 1000.0)
            elapsed = time.monotonic() - started
        finally:
            if server.stdin is not None:
                server.stdin.close()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
    print(report(results))
    print("\n%s%s%s: %d rounds x %d requests per case, interleaved, %.0f s; Python %s, %s"
          % (Path(sys.argv[0]).name, " --chain" if opts.chain else "",
             " --pause-ms %g" % opts.pause_ms if opts.pause_ms else "", opts.rounds, opts.requests, elapsed,
             sys.version.split()[0], ssl.OPENSSL_VERSION))
    return 0


if __name__ == "__main__":
    sys.exit(main())
