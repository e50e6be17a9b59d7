"""The ingest server on a live loopback socket, relaying to the fake upstream."""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import socket
import time

import pytest

from helpers import (KEY, PROJECT, Errors, StartPipeline, auth, envelope, exchange, port_of, post, raw_exchange,
                     wait_until)
from sentry_ext.pipeline import Pipeline
from tools.fake_upstream import FakeUpstream


@pytest.fixture
def pipe(pipelines: StartPipeline) -> Pipeline:
    return pipelines(SENTRY_EXT_MAX_BODY_BYTES="65536",
                      SENTRY_EXT_CLIENT_TIMEOUT_MS="500")


def test_python_sdk_route_forwards_byte_for_byte(pipe: Pipeline, upstream: FakeUpstream) -> None:
    body = gzip.compress(envelope("b" * 32))
    headers = dict(auth(), **{"Content-Encoding": "gzip"})
    status, _, answer = post(port_of(pipe), "/api/42/envelope/", body, headers)
    assert status == 200 and answer == {"id": "b" * 32}
    assert upstream.wait_for(lambda reqs: len(reqs) == 1, 5)
    rec = upstream.requests[0]
    assert rec.path == "/api/42/envelope/" and rec.raw_body == body
    for name in ("x-sentry-auth", "content-encoding", "content-type", "user-agent"):
        assert rec.headers[name] == headers[{"x-sentry-auth": "X-Sentry-Auth", "content-encoding": "Content-Encoding",
                                              "content-type": "Content-Type", "user-agent": "User-Agent"}[name]]
    assert rec.envelope is not None and rec.envelope.event_id == "b" * 32


def test_query_auth_and_other_api_routes(pipe: Pipeline, upstream: FakeUpstream) -> None:
    port = port_of(pipe)
    status, _, _ = post(port, "/api/42/envelope/?sentry_key=%s&sentry_version=7" % KEY, envelope())
    assert status == 200
    status, _, _ = post(port, "/api/42/store/", b'{"message":"legacy"}', auth())
    assert status == 200
    status, _, _ = post(port, "/api/42/minidump/?sentry_key=%s" % KEY, b"MDMP", {"Content-Type": "application/octet-stream"})
    assert status == 200
    assert upstream.wait_for(lambda reqs: len(reqs) == 3, 5)
    targets = sorted(r.target for r in upstream.requests)
    assert targets == sorted(["/api/42/envelope/?sentry_key=%s&sentry_version=7" % KEY, "/api/42/store/",
                              "/api/42/minidump/?sentry_key=%s" % KEY])


def test_js_tunnel_route_uses_envelope_dsn(pipe: Pipeline, upstream: FakeUpstream) -> None:
    dsn = "https://%s@o1.ingest.sentry.io/%s" % (KEY, PROJECT)
    body = envelope("c" * 32, dsn=dsn)
    status, _, answer = post(port_of(pipe), "/envelope", body, {"Content-Type": "text/plain;charset=UTF-8"})
    assert status == 200 and answer == {"id": "c" * 32}
    assert upstream.wait_for(lambda reqs: len(reqs) == 1, 5)
    rec = upstream.requests[0]
    # Upstream is the configured one, never the host named in the envelope.
    assert rec.path == "/api/42/envelope/" and rec.query["sentry_key"] == KEY
    assert rec.raw_body == body


@pytest.mark.parametrize("path,body,headers", [
    ("/api/42/envelope/", envelope(), auth("f" * 32)),                      # wrong key
    ("/api/43/envelope/", envelope(), auth()),                              # wrong project
    ("/api/42/envelope/", envelope(), {}),                                  # no auth at all
    ("/api/42/envelope/?sentry_key=" + "e" * 32, envelope(), auth()),       # header and query disagree
    ("/api/42/envelope/", envelope(dsn="https://%s@h/43" % KEY), auth()),    # envelope dsn names another project
    ("/envelope", envelope(dsn="https://%s@h/42" % ("d" * 32)), {}),         # tunnel with a foreign key
    ("/envelope", envelope(), {}),                                          # tunnel without dsn
    ("/envelope", envelope(dsn="not a dsn"), {}),                           # tunnel with a broken dsn
])
def test_authentication_failures_are_403(pipe: Pipeline, upstream: FakeUpstream, path: str, body: bytes,
                                         headers: dict) -> None:
    status, _, answer = post(port_of(pipe), path, body, headers)
    assert status == 403 and "detail" in answer
    assert pipe.stats.get("received") == 0 and len(pipe.queue) == 0


def test_health_reports_counters(pipe: Pipeline, upstream: FakeUpstream) -> None:
    post(port_of(pipe), "/api/42/envelope/", envelope(), auth())
    assert upstream.wait_for(lambda reqs: len(reqs) == 1, 5)
    assert wait_until(lambda: pipe.stats.get("forwarded") == 1, 5)
    conn = http.client.HTTPConnection("127.0.0.1", port_of(pipe), timeout=5)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    data = json.loads(resp.read())
    assert resp.status == 200
    assert data["version"] and data["uptime_s"] >= 0
    assert data["queue"]["queued"] == 0
    counters = data["counters"]
    assert counters["received"] == 1 and counters["forwarded"] == 1 and counters["bytes_forwarded"] > 0
    assert "dropped" in counters and "retried" in counters


def test_bad_input_answers(pipe: Pipeline, upstream: FakeUpstream) -> None:
    port = port_of(pipe)
    status, _, answer = post(port, "/api/42/envelope/", b"this is not json\n{}", auth())
    assert status == 400 and "malformed envelope" in answer["detail"]
    status, _, _ = post(port, "/api/42/envelope/", b"\x1f\x8bgarbage", dict(auth(), **{"Content-Encoding": "gzip"}))
    assert status == 400
    status, _, _ = post(port, "/nowhere", b"{}", auth())
    assert status == 404
    # missing Content-Length
    answer_raw = raw_exchange(port, b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer_raw.startswith(b"HTTP/1.1 411")
    # conflicting Content-Length headers
    answer_raw = raw_exchange(port, b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                    b"Content-Length: 4\r\n\r\nabcd")
    assert answer_raw.startswith(b"HTTP/1.1 400")
    # Transfer-Encoding together with Content-Length
    answer_raw = raw_exchange(port, b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert answer_raw.startswith(b"HTTP/1.1 400")
    assert pipe.stats.get("received") == 0


def test_oversized_body_is_refused_without_reading_it(pipe: Pipeline) -> None:
    with socket.create_connection(("127.0.0.1", port_of(pipe)), timeout=5) as sock:
        sock.sendall(b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\nX-Sentry-Auth: Sentry sentry_key=%s\r\n"
                     b"Content-Length: 1000000000\r\n\r\n" % KEY.encode())
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in answer.lower()


def test_chunked_bodies_decoded_within_cap(pipe: Pipeline, upstream: FakeUpstream) -> None:
    body = envelope("d" * 32)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
    request = (b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\nX-Sentry-Auth: Sentry sentry_key=%s\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (KEY.encode(), chunks))
    assert raw_exchange(port_of(pipe), request).startswith(b"HTTP/1.1 200")
    assert upstream.wait_for(lambda reqs: len(reqs) == 1, 5)
    assert upstream.requests[0].raw_body == body
    big = b"%x\r\n%s\r\n" % (40000, b"x" * 40000)
    request = (b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + big * 2)
    assert raw_exchange(port_of(pipe), request).startswith(b"HTTP/1.1 413")


def test_idle_client_is_disconnected(pipe: Pipeline) -> None:
    with socket.create_connection(("127.0.0.1", port_of(pipe)), timeout=5) as sock:
        t0 = time.monotonic()
        sock.sendall(b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        assert sock.recv(1024) == b""  # server closes after the 0.5 s client timeout
        assert time.monotonic() - t0 < 4


def test_keep_alive_serves_many_requests_on_one_connection(pipe: Pipeline, upstream: FakeUpstream) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(pipe), timeout=5)
    for i in range(20):
        status, _, _ = post(port_of(pipe), "/api/42/envelope/", envelope("%032x" % i), auth(), conn=conn)
        assert status == 200
    conn.close()
    assert upstream.wait_for(lambda reqs: len(reqs) == 20, 10)
    assert sorted(r.envelope.event_id for r in upstream.requests) == ["%032x" % i for i in range(20)]


def test_queue_overflow_asks_for_a_brief_backoff(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    upstream.delay_s = 0.5
    p = pipelines(SENTRY_EXT_QUEUE_MAX_ITEMS="2", SENTRY_EXT_SENDERS="1")
    statuses = []
    for i in range(4):
        status, headers, _ = post(port_of(p), "/api/42/envelope/", envelope("%032x" % i), auth())
        statuses.append((status, headers.get("x-sentry-rate-limits"), headers.get("retry-after")))
    assert statuses[:2] == [(200, None, None)] * 2
    assert statuses[2:] == [(429, "1::organization:extension_queue_full", "1")] * 2
    assert p.stats.dropped("queue_overflow") == 2
    upstream.delay_s = 0
    assert p.flush(10)
    # The flush also delivers a client report for the two overflows (tests/test_ratelimit_ingest.py).
    assert len([r for r in upstream.requests if "client_report" not in r.item_types]) == 2


def test_expect_100_continue_refuses_an_oversized_body_before_it_is_sent(pipe: Pipeline) -> None:
    with socket.create_connection(("127.0.0.1", port_of(pipe)), timeout=5) as sock:
        sock.sendall(b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer


def test_bodies_being_read_count_against_the_memory_cap(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    p = pipelines(SENTRY_EXT_QUEUE_MAX_BYTES="65536",
                      SENTRY_EXT_MAX_BODY_BYTES="65536")
    body = envelope(payload=b'"' + b"x" * 59000 + b'"')
    head = (b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\nX-Sentry-Auth: Sentry sentry_key=%s\r\n"
            b"Content-Length: %d\r\n\r\n" % (KEY.encode(), len(body)))
    with socket.create_connection(("127.0.0.1", port_of(p)), timeout=5) as slow:
        slow.sendall(head + body[:100])  # holds a ~59 KB reservation while it trickles
        assert wait_until(lambda: p.server._reading_bytes >= len(body), 5)
        status, headers, _ = post(port_of(p), "/api/42/envelope/", envelope(payload=b'"' + b"y" * 9000 + b'"'),
                                  auth())
        assert status == 429 and headers["x-sentry-rate-limits"].startswith("1::")
        slow.sendall(body[100:])
        assert slow.recv(65536).startswith(b"HTTP/1.1 200")
    assert wait_until(lambda: p.server._reading_bytes == 0, 5)
    status, _, _ = post(port_of(p), "/api/42/envelope/", envelope(), auth())
    assert status == 200


BAD_LENGTHS = [b"9" * 5000, "\u0661\u0662".encode("utf-8"), b"\xb2", b"+5", b"1_0", b"0x10", b"9" * 13]


@pytest.mark.parametrize("expect", [b"", b"Expect: 100-continue\r\n"])
@pytest.mark.parametrize("value", BAD_LENGTHS)
def test_a_malformed_content_length_is_a_clean_400(pipe: Pipeline, value: bytes, expect: bytes) -> None:
    errors = Errors()
    logger = logging.getLogger("sentry_ext")
    logger.addHandler(errors)
    try:
        head = (b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\nX-Sentry-Auth: Sentry sentry_key=%s\r\n"
                b"Content-Length: %s\r\n%s\r\n" % (KEY.encode(), value, expect))
        answer, closed = exchange(port_of(pipe), head, half_close=False)
    finally:
        logger.removeHandler(errors)
    # refused from the headers alone, before any "100 Continue" invites the body
    assert answer.startswith(b"HTTP/1.1 400") and b"100 Continue" not in answer, answer[:200]
    assert b"invalid Content-Length" in answer and closed
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert pipe.stats.get("received") == 0
    status, _, _ = post(port_of(pipe), "/api/42/envelope/", envelope(), auth())
    assert status == 200  # still serving


def test_a_reply_the_client_takes_too_long_to_read_ends_the_connection_quietly(
        pipe: Pipeline, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # The client's time limit on sends is the kernel's (SO_SNDTIMEO): a reply it does not take in
    # time raises BlockingIOError (EAGAIN), as a module timeout raised socket.timeout. The request
    # was queued before the reply: it is delivered, and the connection just ends, with no error logged.
    from sentry_ext.ingest.server import IngestHandler

    reply = IngestHandler._reply

    def stalled(self: IngestHandler, status: int, *args: object, **kwargs: object) -> None:
        if status == 200:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        reply(self, status, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(IngestHandler, "_reply", stalled)
    caplog.set_level(logging.DEBUG, logger="sentry_ext")
    body = envelope("%032x" % 7)
    request = (b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\nX-Sentry-Auth: Sentry sentry_key=%s\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (KEY.encode(), len(body), body))
    assert raw_exchange(port_of(pipe), request) == b""  # no answer, and the connection closed
    assert upstream.wait_for(lambda reqs: len(reqs) == 1, 5)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
