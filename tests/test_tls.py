"""The upstream's TLS: one context for every connection (the CA bundle loaded once), and
connections the upstream closed under us (a freeze) told from upstream failures."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any, List

import pytest
import urllib3
from urllib3.exceptions import SSLError

from helpers import KEY, PROJECT, envelope, wait_until
from sentry_ext.delivery.queue import BoundedQueue
from sentry_ext.config import load
from sentry_ext.delivery.forwarder import Forwarder
from sentry_ext.delivery.request import Request
from sentry_ext.util.stats import Stats
from sentry_ext.delivery.tls import LazyCaContext, client_context
from sentry_ext.delivery.transport import Outcome, Transport, closed_under_us
from tools.fake_upstream import FakeUpstream
from tools.tlsutil import openssl, self_signed, server_context

pytestmark = pytest.mark.skipif(openssl() is None, reason="no openssl command for the upstream's certificate")


def _request() -> Request:
    body = envelope()
    return Request("/api/%s/envelope/" % PROJECT, {"Content-Type": "application/x-sentry-envelope",
                                                   "X-Sentry-Auth": "Sentry sentry_key=%s" % KEY}, body, KEY)


def test_every_connection_shares_one_context_with_the_bundle_loaded_once(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with FakeUpstream(tls=server_context(cert, key), idle_close_s=0.05) as upstream:
        transport = Transport(load({"SENTRY_DSN": upstream.dsn(), "SSL_CERT_FILE": str(cert)}))
        context = transport.pool.conn_kw["ssl_context"]
        assert isinstance(context, LazyCaContext)
        assert "ca_certs" not in transport.pool.conn_kw  # loaded once, not per connection
        assert context.ca_file == str(cert) and context.cert_store_stats()["x509_ca"] == 0  # not at init
        for attempt in range(3):
            closed = upstream.idle_closes
            result = transport.send(_request())
            if result.outcome == Outcome.STALE:  # the close raced the request: what the forwarder resends
                result = transport.send(_request())
            assert result.outcome == Outcome.OK, result
            assert wait_until(lambda: upstream.idle_closes > closed, 5.0)  # the upstream closes it meanwhile
        assert context.ca_file is None and context.cert_store_stats()["x509_ca"] == 1  # at the first connection
        assert upstream.handshakes == 3


def test_a_new_connection_resumes_the_last_session_after_the_upstream_closed_the_idle_one(
        tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with FakeUpstream(tls=server_context(cert, key)) as upstream:
        transport = Transport(load({"SENTRY_DSN": upstream.dsn(), "SSL_CERT_FILE": str(cert)}))
        context = transport.pool.conn_kw["ssl_context"]
        for sends in range(1, 5):
            transport.close_connections()  # as the upstream closing it during a freeze
            assert transport.send(_request()).outcome == Outcome.OK
            assert upstream.handshakes == sends
        assert upstream.resumed == 3  # every connection after the first skipped the certificate
        kept = context.session_to_resume
        assert kept is not None and kept.has_ticket
        transport.drop_connections()  # after a SnapStart restore: a new pool and context, no old session
        assert transport.pool.conn_kw["ssl_context"] is not context
        assert transport.pool.conn_kw["ssl_context"].session_to_resume is None
        assert transport.send(_request()).outcome == Outcome.OK
        assert upstream.resumed == 3


def test_an_unreadable_ca_bundle_leaves_urllib3_to_report_it(tmp_path: Path) -> None:
    with FakeUpstream(tls=server_context(*self_signed(tmp_path))) as upstream:
        transport = Transport(load({"SENTRY_DSN": upstream.dsn(), "SSL_CERT_FILE": str(tmp_path / "missing.pem")}))
        result = transport.send(_request())
        assert result.outcome == Outcome.RETRY and "No such file" in result.error
        assert upstream.requests == []


@pytest.mark.parametrize("host, verified", [("127.0.0.1", True), ("[127.0.0.1]", True), ("example.com", False)])
def test_a_connection_whose_caller_names_no_host_is_checked_against_the_upstreams(
        tmp_path: Path, host: str, verified: bool) -> None:
    # urllib3 1.26 names no host for an IP address: with check_hostname on, ``ssl`` refused every
    # such connection (ValueError), and every envelope to an upstream at an IP went to waste.
    cert, key = self_signed(tmp_path)  # subjectAltName IP:127.0.0.1
    with FakeUpstream(tls=server_context(cert, key)) as upstream:
        context = client_context(str(cert), host)
        with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as raw:
            if not verified:
                with pytest.raises(ssl.SSLCertVerificationError, match="example.com"):
                    context.wrap_socket(raw)
                return
            with context.wrap_socket(raw) as tls:
                assert tls.server_hostname == "127.0.0.1" and tls.version() is not None
        assert wait_until(lambda: upstream.handshakes == 1, 5.0)  # the upstream's side completed too


def _freeze_after_first_handshake(monkeypatch: pytest.MonkeyPatch, upstream: FakeUpstream) -> List[int]:
    """The first connection stops between its handshake and its request until the upstream has
    closed it as idle: what a freeze that begins just after the handshake does. Returns a list
    that holds one entry once that happened."""
    frozen: List[int] = []
    real_connect = urllib3.connection.HTTPSConnection.connect

    def connect(conn: Any) -> None:
        closes = upstream.idle_closes
        real_connect(conn)
        if not frozen:
            assert wait_until(lambda: upstream.idle_closes > closes, 5.0)
            frozen.append(1)

    monkeypatch.setattr(urllib3.connection.HTTPSConnection, "connect", connect)
    return frozen


def test_a_connection_closed_between_handshake_and_request_is_stale(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # It fails on its first write with a TLS EOF (urllib3's SSLError), which is no upstream failure.
    cert, key = self_signed(tmp_path)
    with FakeUpstream(tls=server_context(cert, key), idle_close_s=0.05) as upstream:
        transport = Transport(load({"SENTRY_DSN": upstream.dsn(), "SSL_CERT_FILE": str(cert)}))
        frozen = _freeze_after_first_handshake(monkeypatch, upstream)
        result = transport.send(_request())
        assert frozen and result.outcome == Outcome.STALE, result
        assert "EOF" in result.error and upstream.requests == []
        assert transport.send(_request()).outcome == Outcome.OK  # on a new connection
        assert len(upstream.requests) == 1 and upstream.handshakes == 2


def test_the_forwarder_resends_it_at_once_without_backing_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sentry_ext.delivery.forwarder")
    cert, key = self_signed(tmp_path)
    with FakeUpstream(tls=server_context(cert, key), idle_close_s=0.05) as upstream:
        transport = Transport(load({"SENTRY_DSN": upstream.dsn(), "SSL_CERT_FILE": str(cert)}))
        frozen = _freeze_after_first_handshake(monkeypatch, upstream)
        queue, stats = BoundedQueue(10, 1 << 20), Stats()
        forwarder = Forwarder(queue, transport, stats, senders=1, max_attempts=3)
        forwarder.start()
        try:
            assert queue.put(_request())
            assert forwarder.flush(10.0)
        finally:
            forwarder.stop()
        assert frozen and len(upstream.requests) == 1
        assert stats.get("forwarded") == 1 and stats.get("retried") == 1
        # not an upstream failure: no grace period and no warning (a freeze is routine); the retry
        # path would have logged "upstream failed" before resending, so before the flush ended
        assert forwarder.health.failures == 0
        assert not [r for r in caplog.records if r.name == "sentry_ext.delivery.forwarder"], caplog.text


def test_only_an_end_of_the_connection_counts_as_closed_under_us() -> None:
    eof = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    assert closed_under_us(SSLError(eof))
    assert closed_under_us(SSLError(ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed")))
    assert not closed_under_us(SSLError(ssl.SSLCertVerificationError(1, "certificate verify failed")))
    assert not closed_under_us(SSLError("no underlying error"))


def test_replies_before_a_snapshot_close_pooled_connections_but_keep_the_pool_and_context(
        tmp_path: Path, pipelines: Any) -> None:
    # Issue 20, finding 9: before a SnapStart snapshot no connection may stay pooled (it would
    # lead nowhere in every restored copy), but the pool and its TLS context need no rebuilding.
    from helpers import auth, port_of, post

    cert, key = self_signed(tmp_path)
    with FakeUpstream(tls=server_context(cert, key)) as upstream:
        pipe = pipelines(upstream.dsn(KEY, PROJECT), SSL_CERT_FILE=str(cert), SENTRY_EXT_SENDERS="1",
                         SENTRY_EXT_MAX_INFLIGHT="1", AWS_LAMBDA_INITIALIZATION_TYPE="snap-start")
        assert pipe.snapshot_pending
        pool = pipe.transport.pool
        context = pool.conn_kw["ssl_context"]
        for index in range(3):
            status, _, _ = post(port_of(pipe), "/api/%s/envelope/" % PROJECT, envelope("%032x" % index), auth())
            assert status == 200 and pipe.flush(5)
            assert pipe.transport.pool is pool and pool.conn_kw["ssl_context"] is context
            idle = list(pool.pool.queue)
            assert idle and all(conn is None or conn.sock is None for conn in idle), idle
        assert upstream.connections_opened == 3  # each reply closed its connection, the context stays
        pipe.after_restore("test")  # a restore still rebuilds both (a fresh TLS context on purpose)
        assert pipe.transport.pool is not pool and pipe.transport.pool.conn_kw["ssl_context"] is not context
