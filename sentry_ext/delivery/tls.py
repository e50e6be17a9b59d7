"""One TLS client context for every upstream connection, resuming the last TLS session.

urllib3, given no context, builds a new ``SSLContext`` for every connection and loads the CA
bundle into it: certifi's bundle costs ~16 ms of CPU each time (development VM), which after a
freeze (the upstream closed the idle connections) is paid again per connection, i.e. per
invocation. Here the context is made once, with the bundle loaded once.

It also resumes sessions: urllib3 never passes ``session=`` to ``wrap_socket``, and its default
context sets ``OP_NO_TICKET``. This context keeps the session of the last connection that closed
(by then it has read the server's TLS 1.3 tickets, which arrive after the handshake) and offers
it on every new connection: the server then skips its certificate and the client its chain
verification. Sessions belong to the context that made them, which is one more reason for a
single context. A session the server no longer accepts just means a full handshake.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any, Optional


class _ResumableSocket(ssl.SSLSocket):
    """Hands its session to the context when it closes (urllib3 closes a connection the upstream
    dropped before it opens the next one on the same slot)."""

    def close(self) -> None:
        context = self.context
        if isinstance(context, ResumingContext):
            context.remember(self)
        super().close()


class ResumingContext(ssl.SSLContext):
    """A client context that offers the last remembered session to each new connection."""

    sslsocket_class = _ResumableSocket

    def __new__(cls, *args: Any, **kwargs: Any) -> "ResumingContext":
        self = super().__new__(cls, *args, **kwargs)
        self.session_to_resume = None
        self.ca_file = None
        self._ca_lock = threading.Lock()
        return self

    session_to_resume: Optional[ssl.SSLSession]
    ca_file: Optional[str]  # loaded before the first connection (then None)

    def _load_ca(self) -> None:
        with self._ca_lock:
            if self.ca_file is not None:
                self.load_verify_locations(cafile=self.ca_file)
                self.ca_file = None

    def remember(self, sock: ssl.SSLSocket) -> None:
        """Keep ``sock``'s session if it can be resumed (it carries a ticket), unless ``sock`` resumed
        the one kept already: that one works, and reading a TLS 1.3 session is not free (CPython
        copies it, ~0.4 ms, a fifth of a new connection's CPU)."""
        try:
            if self.session_to_resume is not None and sock.session_reused:
                return
            session = sock.session
        except (ValueError, OSError, AttributeError):  # closed, or not connected yet
            return
        if session is not None and session.has_ticket:
            self.session_to_resume = session

    def wrap_socket(self, sock: Any, server_side: bool = False, do_handshake_on_connect: bool = True,
                    suppress_ragged_eofs: bool = True, server_hostname: Optional[str] = None,
                    session: Optional[ssl.SSLSession] = None) -> ssl.SSLSocket:
        if self.ca_file is not None:
            self._load_ca()
        if session is None and not server_side:
            session = self.session_to_resume
        return super().wrap_socket(sock, server_side=server_side, do_handshake_on_connect=do_handshake_on_connect,
                                   suppress_ragged_eofs=suppress_ragged_eofs, server_hostname=server_hostname,
                                   session=session)


def client_context(ca_file: str) -> ResumingContext:
    """The upstream's context: what urllib3's default context is (TLS 1.2+, certificates and host
    names verified, no compression), tickets allowed, with ``ca_file`` loaded once, before the
    first connection: certifi's bundle is 1.6 MiB of RSS and ~16 ms of CPU, which a sandbox that
    never sends (and Init, at 128 MB ~14 times as long in wall time) need not pay. Raises OSError
    now if ``ca_file`` cannot be read."""
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.options &= ~ssl.OP_NO_TICKET
    if getattr(context, "post_handshake_auth", None) is not None:
        context.post_handshake_auth = True
    context.hostname_checks_common_name = False
    if not os.access(ca_file, os.R_OK) or not os.path.isfile(ca_file):
        raise FileNotFoundError("no readable file %s" % ca_file)
    context.ca_file = ca_file
    return context
