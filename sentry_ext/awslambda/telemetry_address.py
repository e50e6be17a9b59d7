"""Where Lambda delivers telemetry: a secret path and the address the listener binds.

Only Lambda may talk to the listener. The subscription URI carries 128 random bits made fresh by
each process (``os.urandom``), so a process that can reach the port but did not see the
subscription cannot guess where to post; every other path is refused. The listener binds what
``sandbox.localdomain`` resolves to (Lambda delivers there), ``127.0.0.1`` when that name does
not resolve in time or cannot be bound: loopback only (Lambda delivers inside the sandbox, and
the local emulators, ours and AWS's RIE, post a ``sandbox.localdomain`` URI to 127.0.0.1), never
all interfaces. The subscription URI names ``sandbox.localdomain`` either way.

Loaded before the first ``/event/next``: os, socket and threading only (start-up budget: main.py).
The name is looked up in ``/etc/hosts`` first (where Lambda lists it); only if it is not there
does ``getaddrinfo`` run, on a helper thread so a slow resolver cannot hold Init beyond
``RESOLVE_TIMEOUT_S``, with the name as bytes (no idna codec import).
"""

from __future__ import annotations

import os
import socket
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, List, Optional, Tuple

SANDBOX_HOST = "sandbox.localdomain"
FALLBACK_HOST = "127.0.0.1"  # loopback: binding all interfaces would expose the listener
RESOLVE_TIMEOUT_S = 0.2  # Lambda resolves it from /etc/hosts in well under a millisecond
PATH_PREFIX = "/telemetry/"
HOSTS_FILE = "/etc/hosts"
MAX_HOSTS_BYTES = 1024 * 1024


def new_path() -> str:
    """A fresh unguessable path: ``/telemetry/`` and 128 random bits in hex."""
    return PATH_PREFIX + os.urandom(16).hex()


def from_hosts(name: str, path: str = HOSTS_FILE) -> Optional[str]:
    """The first IPv4 address ``path`` (``/etc/hosts``) gives ``name``; None if none or unreadable.

    Lambda lists sandbox.localdomain there: reading the file takes microseconds where the first
    ``getaddrinfo`` of a process takes milliseconds (it loads the resolver libraries).
    """
    try:
        with open(path, "rb") as hosts:
            data = hosts.read(MAX_HOSTS_BYTES)
    except OSError:
        return None
    wanted = name.encode("ascii").lower()
    for line in data.split(b"\n"):
        fields = line.split(b"#", 1)[0].split()
        if len(fields) >= 2 and wanted in (f.lower() for f in fields[1:]) and fields[0].count(b".") == 3:
            return fields[0].decode("ascii", "replace")
    return None


def resolve(name: str, timeout: float = RESOLVE_TIMEOUT_S,
            resolver: Optional[Callable[..., Any]] = None) -> Optional[str]:
    """The first IPv4 address of ``name``, or None if it does not resolve within ``timeout`` s.

    A resolver still busy at the timeout is left to finish on its daemon thread.
    """
    lookup = resolver or socket.getaddrinfo
    found: List[Optional[str]] = []

    def run() -> None:
        try:
            infos = lookup(name.encode("ascii"), None, socket.AF_INET, socket.SOCK_STREAM)
            found.append(infos[0][4][0] if infos else None)
        except Exception:  # socket.gaierror, UnicodeError, a broken resolver: not resolvable
            found.append(None)

    thread = threading.Thread(target=run, name="sentry-ext-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    return found[0] if found else None


def bind_address(subscribe_host: str, timeout: float = RESOLVE_TIMEOUT_S,
                 resolver: Optional[Callable[..., Any]] = None) -> Tuple[str, str]:
    """``(host to bind, why)`` for a listener subscribed as ``subscribe_host``.

    For ``sandbox.localdomain``: its address (``/etc/hosts``, else ``resolver``, by default
    ``getaddrinfo``; an injected resolver replaces both), or ``127.0.0.1`` if it does not resolve
    in time. Any other host (a loopback address in local runs) is bound as it is.
    """
    if subscribe_host != SANDBOX_HOST:
        return subscribe_host, "the configured telemetry host"
    address = from_hosts(subscribe_host) if resolver is None else None
    if address is not None:
        return address, "what %s resolves to in %s" % (subscribe_host, HOSTS_FILE)
    address = resolve(subscribe_host, timeout, resolver)
    if address is None:
        return FALLBACK_HOST, "%s did not resolve (waited up to %.0f ms)" % (subscribe_host, timeout * 1000)
    return address, "what %s resolves to" % subscribe_host


def bind(subscribe_host: str, port: int, listen: Callable[[str, int], socket.socket],
         timeout: float = RESOLVE_TIMEOUT_S,
         resolver: Optional[Callable[..., Any]] = None) -> Tuple[socket.socket, str]:
    """Bind the listener with ``listen(host, port)``; ``(socket, one line for the debug log)``.

    Falls back to ``127.0.0.1`` when the resolved address cannot be bound; raises OSError when
    even that fails.
    """
    host, why = bind_address(subscribe_host, timeout, resolver)
    try:
        return listen(host, port), "telemetry listener bound to %s:%d (%s)" % (host, port, why)
    except OSError as exc:
        if host == FALLBACK_HOST or subscribe_host != SANDBOX_HOST:
            raise
        note = "telemetry listener bound to %s:%d (%s:%d not bindable: %s)" % (FALLBACK_HOST, port, host, port, exc)
        return listen(FALLBACK_HOST, port), note
