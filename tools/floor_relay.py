"""The floor for CPU per invocation: the least a Python relay of the extension's shape does.

``tools/bench_cost.py --floor-relay`` runs it in the CPU suite beside the extension and the Node
extension, in both cases (connections kept, and closed in every freeze). It does the I/O every
thawed invocation asks of the extension, in the design card's shape, and nothing else:

- the main thread blocks on ``/event/next`` over one kept HTTP/1.1 connection, and asks again at once
  (the extension's ``background`` mode; the Node extension does the same);
- a Telemetry listener takes Lambda's ``platform`` batches (25 ms buffering, as the extension
  subscribes) and parses their JSON;
- one thread per SDK connection reads each post (``Content-Length`` bodies only), queues it and
  answers 200;
- four sender threads forward each body with the SDK's headers over HTTPS: a pooled connection is
  checked for a close before reuse (as urllib3 does), a new one resumes the last TLS session.

No checks, no counting, no retries, no rate limits, no spool, no logs: a floor, not a product. It
needs nothing outside the standard library; the bench installs it with ``#!<python> -IS``.
Settings: ``SENTRY_DSN`` (the upstream), ``SENTRY_EXT_PORT``, ``SENTRY_EXT_TELEMETRY_PORT``,
``SSL_CERT_FILE``.
"""

import json
import os
import queue
import select
import socket
import ssl
import sys
import threading
import weakref
from urllib.parse import urlsplit

MAX_POLLS = 10_000_000  # bounded, yet forever for any real sandbox
SENDERS = 4
FORWARDED = (b"content-type", b"content-encoding", b"x-sentry-auth", b"user-agent")
DRAIN_S = 1.5
MAX_MESSAGE = 4 * 1024 * 1024  # every recv adds a byte at least: the read loops end within this many


def read_message(sock, buf):
    """One HTTP/1.1 message with a Content-Length body: (head lines, body, bytes read past it)."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_MESSAGE:
            raise ValueError("header section too large")
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length > MAX_MESSAGE:
        raise ValueError("body too large")
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return lines, buf[:length], buf[length:]


class Api:
    """The Extensions and Telemetry APIs over one kept connection (main thread only)."""

    def __init__(self, address):
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host.encode(), int(port)))
        self.buf = b""
        self.ext_id = b""

    def call(self, method, path, body=b"", extra=b""):
        ident = b"Lambda-Extension-Identifier: " + self.ext_id + b"\r\n" if self.ext_id else b""
        self.sock.sendall(b"%s %s HTTP/1.1\r\nHost: x\r\n%s%sContent-Length: %d\r\n\r\n%s"
                          % (method, path, ident, extra, len(body), body))
        lines, reply, self.buf = read_message(self.sock, self.buf)
        if not lines[0].split(b" ")[1].startswith(b"2"):
            raise SystemExit("floor-relay: %r" % lines[0])
        return lines, reply


class Upstream:
    """A pool of HTTPS connections to the DSN's host, shared by the sender threads."""

    def __init__(self, dsn):
        parts = urlsplit(dsn)
        self.host = parts.hostname
        self.addr = (parts.hostname, parts.port or 443)
        self.host_line = b"Host: %s:%d\r\n" % (parts.hostname.encode(), self.addr[1])
        self.context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
        self.session = None
        self.asked = weakref.WeakSet()  # connections whose session was looked at
        self.idle = []
        self.lock = threading.Lock()

    def _connection(self, fresh):
        conn = None
        if not fresh:
            with self.lock:
                conn = self.idle.pop() if self.idle else None
        if conn is not None and select.select([conn], [], [], 0)[0]:  # readable while idle: closed
            conn.close()
            conn = None
        if conn is None:
            raw = socket.create_connection(self.addr, timeout=5)
            conn = self.context.wrap_socket(raw, server_hostname=self.host, session=self.session)
        return conn

    def send(self, path, headers, body):
        for fresh in (False, True):  # a pooled connection that fails is replaced once, as the extension does
            conn = None
            try:
                conn = self._connection(fresh)
                conn.sendall(b"POST %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n%s"
                             % (path, self.host_line, headers, len(body), body))
                lines, _, _ = read_message(conn, b"")
                break
            except (OSError, EOFError, ValueError):  # ValueError: a reply with no numeric Content-Length
                if conn is not None:
                    conn.close()
        else:
            return  # lost: a floor counts nothing
        if conn not in self.asked:  # a new connection's first reply is in, and with it a TLS 1.3 ticket
            self.asked.add(conn)
            if not conn.session_reused:
                self.session = conn.session  # CPython copies a session read: once per full handshake
        if any(line.lower() == b"connection: close" for line in lines):
            conn.close()
            return
        with self.lock:
            self.idle.append(conn)


def sender(work, upstream):
    for _ in range(MAX_POLLS):
        path, headers, body = work.get()
        try:
            upstream.send(path, headers, body)
        finally:
            work.task_done()


def ingest_connection(conn, work):
    buf = b""
    with conn:
        for _ in range(MAX_POLLS):
            try:
                lines, body, buf = read_message(conn, buf)
            except (OSError, EOFError, ValueError):
                return
            headers = b""
            for line in lines[1:]:
                if line.partition(b":")[0].strip().lower() in FORWARDED:
                    headers += line + b"\r\n"
            work.put((lines[0].split(b" ")[1], headers, body))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


def accept_loop(listener, serve, inline):
    for _ in range(MAX_POLLS):
        conn, _ = listener.accept()
        if inline:
            serve(conn)
        else:
            threading.Thread(target=serve, args=(conn,), daemon=True).start()


def telemetry_batch(conn):
    with conn:
        try:
            _, body, _ = read_message(conn, b"")
            json.loads(body)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except (OSError, EOFError, ValueError):  # the accept loop serves on: Lambda retries a batch
            return


def listen(port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


def main():
    api = Api(os.environ["AWS_LAMBDA_RUNTIME_API"])
    name = os.path.basename(sys.argv[0]).encode()
    lines, _ = api.call(b"POST", b"/2020-01-01/extension/register", b'{"events": ["INVOKE", "SHUTDOWN"]}',
                        b"Lambda-Extension-Name: " + name + b"\r\n")
    for line in lines:
        if line.lower().startswith(b"lambda-extension-identifier:"):
            api.ext_id = line.split(b":", 1)[1].strip()
    work = queue.Queue()
    upstream = Upstream(os.environ["SENTRY_DSN"])
    for _ in range(SENDERS):
        threading.Thread(target=sender, args=(work, upstream), daemon=True).start()
    ingest = listen(int(os.environ["SENTRY_EXT_PORT"]))
    threading.Thread(target=accept_loop, args=(ingest, lambda c: ingest_connection(c, work), False),
                     daemon=True).start()
    telemetry_port = int(os.environ["SENTRY_EXT_TELEMETRY_PORT"])
    telemetry = listen(telemetry_port)
    threading.Thread(target=accept_loop, args=(telemetry, telemetry_batch, True), daemon=True).start()
    api.call(b"PUT", b"/2022-07-01/telemetry", json.dumps({
        "schemaVersion": "2022-12-13", "types": ["platform"],
        "buffering": {"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25},
        "destination": {"protocol": "HTTP", "URI": "http://127.0.0.1:%d/t" % telemetry_port}}).encode())
    for _ in range(MAX_POLLS):
        _, event = api.call(b"GET", b"/2020-01-01/extension/event/next")
        if json.loads(event).get("eventType") == "SHUTDOWN":
            break
    with work.all_tasks_done:  # the SHUTDOWN drain, bounded
        if work.unfinished_tasks:
            work.all_tasks_done.wait(DRAIN_S)
    os._exit(0)


if __name__ == "__main__":
    main()
