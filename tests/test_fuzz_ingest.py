"""Fuzzing the live ingest server: random and truncated request lines, headers, bodies and
encodings (gzip bombs included). Every request gets an answer or a closed connection, nothing
logs an internal error, no thread dies, and valid envelopes are still served afterwards."""

from __future__ import annotations

import gzip
import logging
import time
import zlib
from typing import Iterator, Optional, Tuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import KEY, PROJECT, Errors, auth, envelope, exchange, make_pipeline, port_of, post, stop, wait_until
from tools.fake_upstream import FakeUpstream

CLIENT_TIMEOUT_MS = 400
MAX_BODY = 256 * 1024
ANSWER_WITHIN_S = 5.0
FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

AUTH = "Sentry sentry_key=%s, sentry_version=7, sentry_client=fuzz/1" % KEY
BOMB = gzip.compress(b"{" + b" " * (32 * 1024 * 1024), compresslevel=9)  # 32 MiB behind ~32 KiB


@pytest.fixture(scope="module")
def live() -> Iterator[Tuple[object, FakeUpstream, Errors]]:
    up = FakeUpstream().start()
    errors = Errors()
    logger = logging.getLogger("sentry_ext")
    logger.addHandler(errors)
    pipe = make_pipeline(up.dsn(KEY, PROJECT), SENTRY_EXT_CLIENT_TIMEOUT_MS=str(CLIENT_TIMEOUT_MS),
                         SENTRY_EXT_MAX_BODY_BYTES=str(MAX_BODY), SENTRY_EXT_MAX_CONNECTIONS="32")
    try:
        yield pipe, up, errors
    finally:
        logger.removeHandler(errors)
        stop(pipe)
        up.stop()


def check_answer(reply: bytes, closed: bool, data: bytes) -> None:
    assert closed, "server neither answered nor closed within %.0f s for %r" % (ANSWER_WITHIN_S, data[:200])
    if reply:
        # An HTTP/1.x answer starts with a status line. http.server reads a two-word request line
        # ("POST HTTP/1.1") as HTTP/0.9 and answers with a bare body: still an answer.
        for status_line in [line for line in reply.split(b"\r\n") if line.startswith(b"HTTP/1.")]:
            assert not status_line.startswith(b"HTTP/1.1 500") and not status_line.startswith(b"HTTP/1.0 500"), \
                (status_line, data[:300])


# -- strategies ----------------------------------------------------------------------------

methods = st.one_of(st.sampled_from(["POST", "GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "", "post",
                                     "POST POST", "\x00"]), st.text(max_size=8))
paths = st.one_of(st.sampled_from(["/api/42/envelope/", "/envelope", "/envelope/", "/api/42/store/", "/api/store/",
                                   "/health", "/api/42/minidump/?sentry_key=" + KEY, "/api/7/envelope/",
                                   "/api/42/envelope/?sentry_key=" + KEY + "&sentry_version=7",
                                   "/api/42/../../etc/passwd", "*", "", "/" + "a" * 70000, "/api/42/%00/"]),
                  st.text(max_size=30))
versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "", "HTTP/1.1 extra",
                            "HTTP/99999999999999999999.1", "http/1.1", "HTTP/1.x"])
header_names = st.one_of(st.sampled_from(["Content-Length", "Transfer-Encoding", "Content-Encoding", "X-Sentry-Auth",
                                          "Content-Type", "Connection", "Expect", "Host", "content-length"]),
                         st.text(max_size=12))
header_values = st.one_of(st.sampled_from(["0", "5", "-1", "99999999999999999999", "1, 2", "0x10", " 12 ", "chunked",
                                           "gzip", "deflate", "br", "zstd", "gzip, chunked", "identity",
                                           "close", "keep-alive", "100-continue", AUTH, "Sentry sentry_key=nope",
                                           "Sentry ,,,=", ""]),
                          st.text(max_size=30))
headers = st.lists(st.tuples(header_names, header_values), max_size=6)


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"


bodies = st.one_of(
    st.binary(max_size=300),
    st.just(envelope()),
    st.just(gzip.compress(envelope())),
    st.just(zlib.compress(envelope())),
    st.just(BOMB),
    st.just(envelope(dsn="https://%s@o1.ingest.sentry.io/%s" % (KEY, PROJECT))),
    st.just(b"[" * 50000),
    st.binary(max_size=200).map(_chunked),
    st.just(b"zz\r\nxx\r\n0\r\n\r\n"),
)


@st.composite
def requests(draw) -> bytes:
    eol = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    if draw(st.booleans()):  # half the cases get past the request line to the route's checks
        line = "POST %s HTTP/1.1" % draw(st.sampled_from(["/api/42/envelope/", "/envelope", "/api/42/store/"]))
    else:
        line = " ".join(p for p in (draw(methods), draw(paths), draw(versions)) if p)
    body = draw(bodies)
    hdrs = draw(headers)
    if draw(st.booleans()):
        hdrs.append(("X-Sentry-Auth", AUTH))
    if draw(st.booleans()):
        hdrs.append(("Content-Length", str(len(body) + draw(st.sampled_from([0, 0, 0, -1, 1, 100])))))
    head = eol.join([line.encode("utf-8", "surrogatepass")] +
                    [("%s: %s" % hv).encode("utf-8", "surrogatepass") for hv in hdrs])
    data = head + eol + eol + body
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


# -- tests ---------------------------------------------------------------------------------


@FUZZ
@given(requests())
@example(b"POST /api/42/envelope/ HTTP/1.1\r\nX-Sentry-Auth: " + AUTH.encode() + b"\r\nContent-Encoding: gzip\r\n"
         b"Content-Length: %d\r\n\r\n" % len(BOMB) + BOMB)
@example(b"POST /envelope HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n")
@example(b"POST /envelope HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
@example(b"GET /health\r\n")
@example(b"POST /api/42/envelope/ HTTP/1.1\nX-Sentry-Auth: " + AUTH.encode() + b"\nUser-Agent: a\r\x11b\n"
         b"Content-Length: %d\n\n" % len(envelope()) + envelope())  # a bare CR must never reach the upstream
@example(b"POST /envelope HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n")
@example(b"POST /envelope HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n")
def test_random_requests_get_an_answer_or_a_close(live, data: bytes) -> None:
    pipe, _, errors = live
    reply, closed = exchange(port_of(pipe), data, timeout=ANSWER_WITHIN_S)
    check_answer(reply, closed, data)
    assert not errors.records, [r.getMessage() for r in errors.records]


@FUZZ
@given(st.binary(min_size=1, max_size=400))
@example(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS ClientHello
@example(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # the HTTP/2 preface
@example(b"\x00" * 400)
def test_non_http_garbage_gets_an_answer_or_a_close(live, data: bytes) -> None:
    pipe, _, errors = live
    reply, closed = exchange(port_of(pipe), data, timeout=ANSWER_WITHIN_S)
    check_answer(reply, closed, data)
    assert not errors.records, [r.getMessage() for r in errors.records]


@pytest.mark.parametrize("data", [
    b"POST /api/42/envelope/ HTTP/1.1\r\nContent-Length: 100\r\nX-Sentry-Auth: " + AUTH.encode() + b"\r\n\r\n{}",
    b"POST /api/42/envelope/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
    b"POST /api/42/envelope/ HTTP/1.1\r\nContent-Le",
    b"POS",
    b"",
], ids=["body", "chunk", "headers", "request-line", "nothing"])
def test_truncated_requests_on_an_open_socket_time_out(live, data: bytes) -> None:
    pipe, _, _ = live
    t0 = time.monotonic()
    reply, closed = exchange(port_of(pipe), data, half_close=False, timeout=CLIENT_TIMEOUT_MS / 1000 + 3)
    assert closed, "an idle half-request held its connection past the client timeout"
    assert time.monotonic() - t0 < CLIENT_TIMEOUT_MS / 1000 + 2
    assert not reply.startswith(b"HTTP/1.1 500")


def test_gzip_bomb_is_refused_without_inflating_it(live) -> None:
    pipe, _, _ = live
    hwm = _reset_hwm()
    headers = dict(auth(), **{"Content-Encoding": "gzip"})
    t0 = time.monotonic()
    status, _, body = post(port_of(pipe), "/api/%s/envelope/" % PROJECT, BOMB, headers)
    assert status == 400 and "malformed envelope" in body["detail"]
    status, _, _ = post(port_of(pipe), "/envelope", BOMB, {"Content-Encoding": "gzip"})
    assert status == 400
    assert time.monotonic() - t0 < 2.0
    if hwm:
        assert _hwm_kib() - hwm < 16 * 1024, "inflating the bomb cost %d KiB" % (_hwm_kib() - hwm)


def test_rate_limit_inspection_of_fuzzed_bodies_fails_open(live) -> None:
    """With a per-category limit active, ingest decodes and parses bodies: bombs and junk must stay harmless."""
    pipe, up, errors = live
    limits = pipe.limits
    limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "1:transaction:key"})
    try:
        for body, encoding in [(BOMB, "gzip"), (gzip.compress(envelope())[:-4], "gzip"), (b"{}\n" + b"[" * 50000, ""),
                               (zlib.compress(envelope()), "deflate"), (b"\x00" * 100, "deflate")]:
            headers = dict(auth(), **{"Content-Encoding": encoding}) if encoding else auth()
            status, _, _ = post(port_of(pipe), "/api/%s/envelope/" % PROJECT, body, headers)
            assert status in (200, 400, 429), status
    finally:
        limits_expired = wait_until(lambda: not limits.any_active(KEY), 3)
    assert limits_expired, "the 1 s rate limit was still active after 3 s"
    assert not errors.records, [r.getMessage() for r in errors.records]


def test_after_the_fuzzing_the_server_still_relays_and_no_thread_died(live) -> None:
    pipe, up, errors = live
    up.clear()
    for index in range(5):
        status, _, answer = post(port_of(pipe), "/api/%s/envelope/" % PROJECT, envelope("%032x" % index), auth())
        assert status == 200 and answer == {"id": "%032x" % index}
    assert up.wait_for(lambda reqs: {"%032x" % i for i in range(5)} <= {r.envelope.event_id for r in reqs if r.envelope},
                       5)
    assert pipe.server._thread is not None and pipe.server._thread.is_alive()
    assert all(t.is_alive() for t in pipe.forwarder._threads)
    # no connection threads left over: every fuzz connection ended
    assert wait_until(lambda: open_slots(pipe) == pipe.cfg.max_connections, 5)
    assert not errors.records, [r.getMessage() for r in errors.records]


def open_slots(pipe) -> int:
    """Free connection slots of the ingest server (max_connections when no connection is open)."""
    return pipe.server._slots._value


def _hwm_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> Optional[int]:
    """Reset this process's peak RSS (Linux clear_refs 5); None where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _hwm_kib()
    except OSError:
        return None
