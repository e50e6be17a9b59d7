"""The floor for cold-start comparisons: the least a Python Lambda extension can do.

It registers for INVOKE and SHUTDOWN, then polls ``/event/next`` forever and exits on SHUTDOWN.
Nothing else: no logging, no config, no JSON module (the one body it sends is a constant, and the
one fact it needs from an event is whether it says ``"SHUTDOWN"``).

Why this is the fastest honest floor (``tools/bench.py`` measures it beside the extension):
- ``socket`` only: ``http.client`` costs ~30 ms more to import (``email.parser``, ``ssl``);
  ``socket`` is what any extension needs to talk HTTP at all, so the floor pays for it too.
- The bench installs it as ``<opt>/extensions/floor-extension`` with the shebang
  ``#!<interpreter> -IS``: Lambda execs the file directly, no shell in between, no site-packages.
- One short HTTP/1.1 exchange per call on a fresh loopback connection, as the extension does.
- The host goes to ``getaddrinfo`` as bytes: given a str, CPython encodes it with the ``idna``
  codec, whose import (with ``re``) costs more than the rest of this script.

Run by hand: ``AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001 python3 -IS tools/floor_extension.py``.
"""

import os
import socket
import sys

REGISTER_BODY = b'{"events": ["INVOKE", "SHUTDOWN"]}'
MAX_POLLS = 10_000_000  # bounded, yet forever for any real sandbox


def call(addr, head, body=b""):
    """Send one request (``head`` without the final blank line); return (headers bytes, body bytes)."""
    with socket.create_connection(addr) as sock:
        sock.sendall(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        data = b""
        while True:  # Connection: close, so the reply ends at EOF
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    headers, _, rest = data.partition(b"\r\n\r\n")
    if not headers.startswith(b"HTTP/1.1 2") and not headers.startswith(b"HTTP/1.0 2"):
        raise SystemExit("floor-extension: %r" % headers[:200])
    return headers, rest


def main():
    host, _, port = os.environ["AWS_LAMBDA_RUNTIME_API"].rpartition(":")
    addr = (host.encode(), int(port))  # bytes: a str host would load the idna codec (and re), ~4 ms
    name = os.path.basename(sys.argv[0]).encode()
    headers, _ = call(addr, b"POST /2020-01-01/extension/register HTTP/1.1\r\nHost: x\r\n"
                            b"Lambda-Extension-Name: " + name + b"\r\n", REGISTER_BODY)
    ext_id = b""
    for line in headers.split(b"\r\n"):
        if line.lower().startswith(b"lambda-extension-identifier:"):
            ext_id = line.split(b":", 1)[1].strip()
    poll = b"GET /2020-01-01/extension/event/next HTTP/1.1\r\nHost: x\r\nLambda-Extension-Identifier: " + ext_id + b"\r\n"
    for _ in range(MAX_POLLS):
        _, event = call(addr, poll)
        if b'"SHUTDOWN"' in event:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
