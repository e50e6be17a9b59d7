"""http1.connect_tls, the transport's way to open a TLS connection without urllib3's connect: every
failure comes out of ``Transport.send`` as it does through urllib3's connect (the same outcome,
exception type and ``maybe_delivered``), and the connection stays one urllib3's pool can use."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest
import urllib3
from urllib3.util.connection import is_connection_dropped

from helpers import KEY, PROJECT, envelope
from sentry_ext.config import load
from sentry_ext.delivery import http1
from sentry_ext.delivery.request import Request
from sentry_ext.delivery.transport import Outcome, Result, Transport
from tools.fake_upstream import FakeUpstream
from tools.tlsutil import openssl, self_signed, server_context

pytestmark = pytest.mark.skipif(openssl() is None, reason="no openssl command for the upstream's certificate")


def _request() -> Request:
    return Request("/api/%s/envelope/" % PROJECT, {"Content-Type": "application/x-sentry-envelope",
                                                   "X-Sentry-Auth": "Sentry sentry_key=%s" % KEY}, envelope(), KEY)


# urllib3 1.26 hands ``ssl`` no server_hostname for an IP address, which our context (check_hostname)
# refuses with a ValueError: through urllib3's connect, 1.26 cannot reach the tests' 127.0.0.1 over TLS.
URLLIB3_2 = not urllib3.__version__.startswith("1.")


def _both_ways(monkeypatch: pytest.MonkeyPatch, send: Callable[[], Result]) -> Tuple[Result, Optional[Result]]:
    """``send()`` through connect_tls, then (urllib3 2) through urllib3's connect (connect_tls declining)."""
    calls: List[bool] = []
    real = http1.connect_tls

    def counted(conn: Any) -> bool:
        calls.append(True)
        return real(conn)

    monkeypatch.setattr(http1, "connect_tls", counted)
    ours = send()
    assert calls, "the transport did not take connect_tls"
    monkeypatch.setattr(http1, "connect_tls", lambda conn: False)
    return ours, send() if URLLIB3_2 else None


def _same(ours: Result, theirs: Optional[Result]) -> None:
    if theirs is None:
        return
    assert (ours.outcome, ours.maybe_delivered) == (theirs.outcome, theirs.maybe_delivered), (ours, theirs)
    assert ours.error.split(":")[0] == theirs.error.split(":")[0], (ours, theirs)


def _transport(dsn: str, cafile: Path, connect_ms: int = 2000) -> Transport:
    return Transport(load({"SENTRY_DSN": dsn, "SSL_CERT_FILE": str(cafile),
                           "SENTRY_EXT_CONNECT_TIMEOUT_MS": str(connect_ms)}))


@pytest.fixture
def cert(tmp_path: Path) -> Path:
    return self_signed(tmp_path / "trusted")[0]


@contextlib.contextmanager
def _listener(serve: Callable[[socket.socket], None]) -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    accepted: List[socket.socket] = []

    def run() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)
            serve(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    for conn in accepted:
        conn.close()


def test_a_refused_port_is_a_retry_not_maybe_delivered(monkeypatch: pytest.MonkeyPatch, cert: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    transport = _transport("https://%s@127.0.0.1:%d/%s" % (KEY, port, PROJECT), cert)
    ours, theirs = _both_ways(monkeypatch, lambda: transport.send(_request()))
    assert ours.outcome == Outcome.RETRY and not ours.maybe_delivered
    assert ours.error.startswith("NewConnectionError") and "refused" in ours.error, ours
    _same(ours, theirs)


def test_a_name_that_does_not_resolve_is_a_retry(monkeypatch: pytest.MonkeyPatch, cert: Path) -> None:
    def no_name(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_name)
    transport = _transport("https://%s@upstream.invalid/%s" % (KEY, PROJECT), cert)
    ours, theirs = _both_ways(monkeypatch, lambda: transport.send(_request()))
    assert ours.outcome == Outcome.RETRY and not ours.maybe_delivered and "Name or service" in ours.error
    _same(ours, theirs)


def test_an_untrusted_certificate_is_a_retry_with_urllib3s_ssl_error(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path, cert: Path) -> None:
    with FakeUpstream(tls=server_context(*self_signed(tmp_path / "other"))) as upstream:
        transport = _transport(upstream.dsn(), cert)
        ours, theirs = _both_ways(monkeypatch, lambda: transport.send(_request()))
        assert upstream.requests == []
    assert ours.outcome == Outcome.RETRY and not ours.maybe_delivered
    assert ours.error.startswith("SSLError") and "CERTIFICATE_VERIFY_FAILED" in ours.error, ours
    _same(ours, theirs)


def test_a_name_the_certificate_does_not_cover_is_refused(monkeypatch: pytest.MonkeyPatch, cert: Path) -> None:
    with FakeUpstream(tls=server_context(cert, cert.parent / "upstream-key.pem")) as upstream:
        transport = _transport(upstream.dsn().replace("127.0.0.1", "localhost"), cert)  # the SAN is the IP only
        ours, theirs = _both_ways(monkeypatch, lambda: transport.send(_request()))
        assert upstream.requests == []
    assert ours.outcome == Outcome.RETRY and ours.error.startswith("SSLError") and "match" in ours.error, ours
    _same(ours, theirs)


def _hello_then_close(conn: socket.socket) -> None:
    conn.recv(65536)  # the ClientHello, so that the close is an EOF (not a reset, as unread data makes it)
    conn.close()


def test_a_server_that_closes_in_the_handshake_is_stale_as_through_urllib3(monkeypatch: pytest.MonkeyPatch,
                                                                           cert: Path) -> None:
    with _listener(_hello_then_close) as port:
        transport = _transport("https://%s@127.0.0.1:%d/%s" % (KEY, port, PROJECT), cert)
        ours, theirs = _both_ways(monkeypatch, lambda: transport.send(_request()))
    assert ours.outcome == Outcome.STALE and not ours.maybe_delivered and "EOF" in ours.error, ours
    _same(ours, theirs)


def test_a_server_that_closes_at_once_is_stale_as_through_urllib3(monkeypatch: pytest.MonkeyPatch,
                                                                  cert: Path) -> None:
    with _listener(lambda conn: conn.close()) as port:  # an EOF or a reset, as the race goes
        transport = _transport("https://%s@127.0.0.1:%d/%s" % (KEY, port, PROJECT), cert)
        ours, theirs = _both_ways(monkeypatch, lambda: transport.send(_request()))
    assert (ours.outcome, ours.maybe_delivered) == (Outcome.STALE, False), ours
    assert theirs is None or (theirs.outcome, theirs.maybe_delivered) == (Outcome.STALE, False), theirs


def test_a_handshake_that_never_ends_times_out_as_through_urllib3(monkeypatch: pytest.MonkeyPatch,
                                                                  cert: Path) -> None:
    with _listener(lambda conn: None) as port:  # accepted, never answered
        transport = _transport("https://%s@127.0.0.1:%d/%s" % (KEY, port, PROJECT), cert, connect_ms=100)
        ours, theirs = _both_ways(monkeypatch, lambda: transport.send(_request()))
    assert ours.outcome == Outcome.RETRY and ours.error.startswith("ReadTimeoutError"), ours
    _same(ours, theirs)


def test_the_connection_serves_again_and_the_pool_sees_it_verified_and_drops_it_closed(cert: Path) -> None:
    tls = server_context(cert, cert.parent / "upstream-key.pem")
    tls.set_alpn_protocols(["h2", "http/1.1"])  # it picks http/1.1 only if we offer it, as urllib3 does
    with FakeUpstream(tls=tls) as upstream:
        transport = _transport(upstream.dsn(), cert)
        assert transport.send(_request()).outcome == Outcome.OK
        conn = transport.pool._get_conn()
        assert conn.is_verified and not is_connection_dropped(conn) and conn.sock.selected_alpn_protocol() == "http/1.1"
        assert conn.served == 1
        transport.pool._put_conn(conn)
        assert transport.send(_request()).outcome == Outcome.OK and upstream.handshakes == 1
        conn = transport.pool._get_conn()
        assert conn.served == 2
        conn.close()
        assert conn.sock is None and (not conn.is_verified or not URLLIB3_2)  # 1.26 leaves it set
        transport.pool._put_conn(conn)
        assert transport.send(_request()).outcome == Outcome.OK and upstream.handshakes == 2


@pytest.mark.parametrize("host, name", [("127.0.0.1", "127.0.0.1"), ("upstream.example", "upstream.example"),
                                        ("::1", "::1"), ("[::1]", "::1"), ("fe80::1%eth0", "fe80::1"),
                                        ("[no.ip]", "[no.ip]")])
def test_the_name_handed_to_ssl_is_urllib3s(host: str, name: str) -> None:
    assert http1._tls_name(host) == name
