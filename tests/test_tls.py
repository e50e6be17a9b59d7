"""The upstream's TLS: one context for every connection (the CA bundle loaded once), and the
last session resumed when a connection the upstream closed is replaced (a thaw after a freeze)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import KEY, PROJECT, envelope, wait_until
from sentry_ext.config import load
from sentry_ext.request import Request
from sentry_ext.tls import ResumingContext
from sentry_ext.transport import Outcome, Transport
from tools.fake_upstream import FakeUpstream
from tools.tlsutil import openssl, self_signed, server_context

pytestmark = pytest.mark.skipif(openssl() is None, reason="no openssl command for the upstream's certificate")


def _request() -> Request:
    body = envelope()
    return Request("/api/%s/envelope/" % PROJECT, {"Content-Type": "application/x-sentry-envelope",
                                                   "X-Sentry-Auth": "Sentry sentry_key=%s" % KEY}, body, KEY)


def test_a_replaced_connection_resumes_the_last_session(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with FakeUpstream(tls=server_context(cert, key), idle_close_s=0.05) as upstream:
        transport = Transport(load({"SENTRY_DSN": upstream.dsn(), "SSL_CERT_FILE": str(cert)}))
        context = transport.pool.conn_kw["ssl_context"]
        assert isinstance(context, ResumingContext)
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
        assert upstream.resumed == 2  # every connection after the first resumed the session


def test_an_unreadable_ca_bundle_leaves_urllib3_to_report_it(tmp_path: Path) -> None:
    with FakeUpstream(tls=server_context(*self_signed(tmp_path))) as upstream:
        transport = Transport(load({"SENTRY_DSN": upstream.dsn(), "SSL_CERT_FILE": str(tmp_path / "missing.pem")}))
        result = transport.send(_request())
        assert result.outcome == Outcome.RETRY and "No such file" in result.error
        assert upstream.requests == []
