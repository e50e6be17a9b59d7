"""One TLS client context for every upstream connection.

urllib3, given no context, builds a new ``SSLContext`` for every connection and loads the CA
bundle into it: certifi's bundle costs ~16 ms of CPU each time (development VM), which after a
freeze (the upstream closed the idle connections) is paid again per connection, i.e. per
invocation. Here the context is made once, and the bundle loaded once, at the first connection.

It also offers the upstream's last TLS session to each new connection (urllib3 passes no
``session=``): an upstream that closed the idle connections during a freeze then skips sending
its certificate chain and we skip verifying it. The transport hands the context a session once a
new connection's reply is in (a TLS 1.3 ticket arrives after the handshake) and the session was
not itself a resumption: reading one costs CPython a copy of it, with its certificate. A session
the upstream no longer accepts only means a full handshake, after which its new one is kept.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any, Optional


class LazyCaContext(ssl.SSLContext):
    """A client context that loads its CA file at the first connection, not when it is made."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "LazyCaContext":
        self = super().__new__(cls, *args, **kwargs)
        self.ca_file = None
        self.session_to_resume = None
        self.upstream_host = None
        self._ca_lock = threading.Lock()
        return self

    ca_file: Optional[str]  # loaded before the first connection (then None)
    session_to_resume: Optional[ssl.SSLSession]  # offered to every new client connection
    # The name checked when a caller names none: urllib3 1.26 passes no server_hostname for an IP
    # address (no SNI for one), and check_hostname then refuses the connection outright.
    upstream_host: Optional[str]

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        if self.ca_file is not None:
            with self._ca_lock:
                if self.ca_file is not None:
                    self.load_verify_locations(cafile=self.ca_file)
                    self.ca_file = None
        if not kwargs.get("server_side") and len(args) == 1:
            if kwargs.get("session") is None:
                kwargs["session"] = self.session_to_resume
            if kwargs.get("server_hostname") is None:
                kwargs["server_hostname"] = self.upstream_host
        return super().wrap_socket(*args, **kwargs)


def keep_session(sock: Any) -> None:
    """Offer the session of ``sock``, a new connection whose reply is in, to later connections of
    its context, unless it resumed one (that one works) or is no TLS socket of a ``LazyCaContext``."""
    context = getattr(sock, "context", None)
    if not isinstance(context, LazyCaContext):
        return
    try:
        if sock.session_reused:
            return
        session = sock.session
    except (ValueError, OSError):  # closed meanwhile
        return
    if session is not None and session.has_ticket:
        context.session_to_resume = session


def client_context(ca_file: str, host: Optional[str] = None) -> LazyCaContext:
    """The upstream's context: what urllib3's default context is (TLS 1.2+, certificates and host
    names verified, no compression), with ``ca_file`` loaded once, before the first connection:
    certifi's bundle is 1.6 MiB of RSS and ~16 ms of CPU, which a sandbox that never sends (and
    Init, at 128 MB ~14 times as long in wall time) need not pay; ``host``, the upstream's, is
    checked on a connection whose caller names none. Raises OSError now if ``ca_file`` cannot be read."""
    context = LazyCaContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    if getattr(context, "post_handshake_auth", None) is not None:
        context.post_handshake_auth = True
    context.hostname_checks_common_name = False
    if not os.access(ca_file, os.R_OK) or not os.path.isfile(ca_file):
        raise FileNotFoundError("no readable file %s" % ca_file)
    context.ca_file = ca_file
    if host:
        context.upstream_host = host.strip("[]").partition("%")[0]  # an IPv6 address: no brackets, no zone
    return context
