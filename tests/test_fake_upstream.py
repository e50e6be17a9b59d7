"""Tests for tools.fake_upstream, the fake Sentry ingest server used as the test oracle."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
import urllib3

from helpers import KEY
from tools.fake_upstream import FakeUpstream, Recorded, Reply, log_item_problems, main, parse_envelope

ROOT = Path(__file__).resolve().parent.parent
AUTH = f"Sentry sentry_key={KEY}, sentry_version=7, sentry_client=test/1.0"
ENVELOPE_PATH = "/api/42/envelope/"
CLIENT_TIMEOUT = 5.0


@pytest.fixture()
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture()
def pool() -> Iterator[urllib3.PoolManager]:
    manager = urllib3.PoolManager(
        retries=False, timeout=urllib3.Timeout(connect=CLIENT_TIMEOUT, read=CLIENT_TIMEOUT)
    )
    yield manager
    manager.clear()


def make_envelope(event_id: Optional[str] = None, with_length: bool = True) -> Tuple[bytes, str]:
    event_id = event_id or uuid.uuid4().hex
    event = json.dumps({"event_id": event_id, "message": "hi\u00e9"}).encode()
    attachment = b"line1\nline2"  # contains a newline: only valid with a length
    session = b'{"sid":"abc"}'
    header = json.dumps({"event_id": event_id}).encode()
    if with_length:
        parts = [
            header,
            json.dumps({"type": "event", "length": len(event)}).encode(),
            event,
            json.dumps({"type": "attachment", "length": len(attachment)}).encode(),
            attachment,
            json.dumps({"type": "session", "length": len(session)}).encode(),
            session,
        ]
    else:
        parts = [header, b'{"type":"event"}', event, b'{"type":"session"}', session]
    return b"\n".join(parts) + b"\n", event_id


def conn_to(up: FakeUpstream) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", up.port, timeout=CLIENT_TIMEOUT)


def post(conn: http.client.HTTPConnection, body: bytes = b"{}\n", path: str = ENVELOPE_PATH,
         headers: Optional[Dict[str, str]] = None) -> http.client.HTTPResponse:
    conn.request("POST", path, body=body, headers=headers or {"X-Sentry-Auth": AUTH})
    return conn.getresponse()


# ------------------------------------------------------------------------------ parser


def test_parse_envelope_with_lengths_and_without() -> None:
    data, event_id = make_envelope(with_length=True)
    env = parse_envelope(data)
    assert env.header == {"event_id": event_id}
    assert env.item_types == ["event", "attachment", "session"]
    assert env.items[1][1] == b"line1\nline2"
    assert json.loads(env.items[0][1])["event_id"] == event_id

    data2, _ = make_envelope(with_length=False)
    env2 = parse_envelope(data2)
    assert env2.item_types == ["event", "session"]
    assert env2.items[1][1] == b'{"sid":"abc"}'


def test_parse_envelope_trailing_newline_optional_and_edge_cases() -> None:
    assert parse_envelope(b'{}\n{"type":"x","length":3}\nabc').items == [
        ({"type": "x", "length": 3}, b"abc")
    ]
    assert parse_envelope(b'{}\n{"type":"x"}\nabc').items[0][1] == b"abc"
    assert parse_envelope(b'{"event_id":"e"}').items == []
    assert parse_envelope(b"{}\n").items == []
    # zero length, and an item header at the very end without a newline
    env = parse_envelope(b'{}\n{"type":"a","length":0}\n\n{"type":"b"}')
    assert env.items == [({"type": "a", "length": 0}, b""), ({"type": "b"}, b"")]
    # empty payload without length
    assert parse_envelope(b'{}\n{"type":"a"}\n\n').items == [({"type": "a"}, b"")]
    # unknown keys and types are kept
    env = parse_envelope(b'{"x":1}\n{"type":"weird","foo":"bar"}\npayload\n')
    assert env.header == {"x": 1}
    assert env.items == [({"type": "weird", "foo": "bar"}, b"payload")]


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\n",
        b"not json\n",
        b"[1,2]\n",
        b'{}\n{"length":1}\nx\n',  # no type
        b'{}\n{"type":"x","length":10}\nabc\n',  # length too long
        b'{}\n{"type":"x","length":2}\nabc\n',  # payload not followed by newline
        b'{}\n{"type":"x","length":-1}\n\n',
        b'{}\n{"type":"x","length":"3"}\nabc\n',
        b'{}\n\n',  # blank item header
        b'{}\nnot json\n',
        b"\xff\xfe\n",
    ],
)
def test_parse_envelope_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(ValueError):
        parse_envelope(garbage)


# ------------------------------------------------------------------------------ recording


@pytest.mark.parametrize("with_length", [True, False])
def test_records_envelope(up: FakeUpstream, pool: urllib3.PoolManager, with_length: bool) -> None:
    data, event_id = make_envelope(with_length=with_length)
    resp = pool.request(
        "POST",
        up.base_url + ENVELOPE_PATH,
        body=data,
        headers={"X-Sentry-Auth": AUTH, "Content-Type": "application/x-sentry-envelope"},
    )
    assert resp.status == 200
    assert json.loads(resp.data) == {"id": event_id}
    (rec,) = up.requests
    assert isinstance(rec, Recorded)
    assert rec.method == "POST"
    assert rec.path == ENVELOPE_PATH
    assert rec.status == 200
    assert rec.raw_body == data == rec.body
    assert rec.decode_error is None
    assert rec.headers["content-type"] == "application/x-sentry-envelope"
    assert rec.auth == {"sentry_key": KEY, "sentry_version": "7", "sentry_client": "test/1.0"}
    assert rec.envelope is not None
    assert rec.envelope.header["event_id"] == event_id
    expected = ["event", "attachment", "session"] if with_length else ["event", "session"]
    assert rec.item_types == expected
    assert up.event_ids() == [event_id]
    assert [h["type"] for _, h, _ in up.items()] == expected
    assert [p for _, _, p in up.items("session")] == [b'{"sid":"abc"}']
    assert rec.t <= time.monotonic()


@pytest.mark.parametrize(
    "encoding, compress",
    [
        ("gzip", lambda b: gzip.compress(b, 9)),
        ("deflate", zlib.compress),  # zlib-wrapped
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate
        ("identity", lambda b: b),
    ],
)
def test_decodes_compressed_bodies(up: FakeUpstream, pool: urllib3.PoolManager, encoding: str,
                                   compress) -> None:
    data, event_id = make_envelope()
    raw = compress(data)
    resp = pool.request(
        "POST",
        up.base_url + ENVELOPE_PATH,
        body=raw,
        headers={"X-Sentry-Auth": AUTH, "Content-Encoding": encoding},
    )
    assert resp.status == 200
    (rec,) = up.requests
    assert rec.raw_body == raw
    assert rec.body == data
    assert rec.decode_error is None
    assert rec.envelope is not None and rec.envelope.event_id == event_id


def test_bad_compressed_body_keeps_raw(up: FakeUpstream, pool: urllib3.PoolManager) -> None:
    resp = pool.request("POST", up.base_url + ENVELOPE_PATH, body=b"not gzip",
                        headers={"Content-Encoding": "gzip"})
    assert resp.status == 200  # the fake still answers with its default
    (rec,) = up.requests
    assert rec.body == rec.raw_body == b"not gzip"
    assert rec.decode_error and "gzip" in rec.decode_error
    assert rec.envelope is None


def test_chunked_request_body(up: FakeUpstream) -> None:
    data, event_id = make_envelope()
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    conn = conn_to(up)
    try:
        conn.request("POST", ENVELOPE_PATH, body=iter(pieces), encode_chunked=True,
                     headers={"X-Sentry-Auth": AUTH, "Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read()) == {"id": event_id}
        # keep-alive still works after a chunked request
        resp2 = post(conn, b'{}\n{"type":"x"}\ny\n')
        assert resp2.status == 200
        resp2.read()
    finally:
        conn.close()
    first, second = up.requests
    assert first.headers["transfer-encoding"] == "chunked"
    assert first.raw_body == data
    assert first.envelope is not None and first.envelope.item_types == ["event", "attachment", "session"]
    assert second.item_types == ["x"]
    assert up.connections_opened == 1


def test_chunked_with_urllib3(up: FakeUpstream, pool: urllib3.PoolManager) -> None:
    data, _ = make_envelope()
    resp = pool.request("POST", up.base_url + ENVELOPE_PATH, body=[data[:10], data[10:]],
                        chunked=True, headers={"Content-Encoding": "identity"})
    assert resp.status == 200
    assert up.requests[0].body == data


def test_get_and_query_auth_recorded(up: FakeUpstream, pool: urllib3.PoolManager) -> None:
    resp = pool.request("GET", up.base_url + f"/api/7/store/?sentry_key={KEY}&sentry_version=7&x=")
    assert resp.status == 200
    (rec,) = up.requests
    assert rec.method == "GET"
    assert rec.path == "/api/7/store/"
    assert rec.target == f"/api/7/store/?sentry_key={KEY}&sentry_version=7&x="
    assert rec.query == {"sentry_key": KEY, "sentry_version": "7", "x": ""}
    assert rec.auth == {"sentry_key": KEY, "sentry_version": "7"}
    assert rec.envelope is None and rec.envelope_error is None
    assert len(json.loads(resp.data)["id"]) == 32


def test_tunnel_path_and_bad_envelope(up: FakeUpstream, pool: urllib3.PoolManager) -> None:
    pool.request("POST", up.base_url + "/envelope", body=b'{"dsn":"x"}\n{"type":"event"}\n{}\n')
    pool.request("POST", up.base_url + "/envelope", body=b"garbage")
    good, bad = up.requests
    assert good.envelope is not None and good.envelope.header == {"dsn": "x"}
    assert good.auth == {}
    assert bad.envelope is None and bad.envelope_error


def test_clear_and_snapshot_is_a_copy(up: FakeUpstream, pool: urllib3.PoolManager) -> None:
    pool.request("POST", up.base_url + ENVELOPE_PATH, body=b"{}\n")
    snapshot = up.requests
    snapshot.clear()
    assert len(up.requests) == 1
    up.clear()
    assert up.requests == []


# ------------------------------------------------------------------------------ scripted replies


def test_429_with_rate_limit_header_verbatim(up: FakeUpstream, pool: urllib3.PoolManager) -> None:
    limits = "60:error;transaction:key:quota_exceeded, 2.5::organization"
    up.script([Reply(status=429, headers={"X-Sentry-Rate-Limits": limits, "Retry-After": "60"})])
    resp = pool.request("POST", up.base_url + ENVELOPE_PATH, body=b"{}\n")
    assert resp.status == 429
    assert resp.headers["X-Sentry-Rate-Limits"] == limits
    assert resp.headers["Retry-After"] == "60"
    assert up.requests[0].status == 429
    # script exhausted: default 200 again
    assert pool.request("POST", up.base_url + ENVELOPE_PATH, body=b"{}\n").status == 200


def test_500_then_200_then_default(up: FakeUpstream, pool: urllib3.PoolManager) -> None:
    up.script([Reply(status=500), Reply(status=200, body=b'{"id":"custom"}')])
    assert up.pending_script == 2
    statuses = []
    bodies = []
    for _ in range(3):
        resp = pool.request("POST", up.base_url + ENVELOPE_PATH, body=b'{"event_id":"e1"}\n')
        statuses.append(resp.status)
        bodies.append(resp.data)
    assert statuses == [500, 200, 200]
    assert bodies[1] == b'{"id":"custom"}'
    assert json.loads(bodies[2]) == {"id": "e1"}
    assert [r.status for r in up.requests] == [500, 200, 200]
    assert up.pending_script == 0


def test_default_reply_can_be_changed(up: FakeUpstream, pool: urllib3.PoolManager) -> None:
    up.default = Reply(status=503, headers={"Retry-After": "1"})
    resp = pool.request("POST", up.base_url + ENVELOPE_PATH, body=b"{}\n")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"


def test_reply_validation() -> None:
    with pytest.raises(ValueError):
        Reply(action="explode")
    with pytest.raises(ValueError):
        Reply(status=42)


def test_drop_closes_without_reply(up: FakeUpstream) -> None:
    up.script([Reply(action="drop")])
    conn = conn_to(up)
    try:
        with pytest.raises(http.client.RemoteDisconnected):
            post(conn)
    finally:
        conn.close()
    (rec,) = up.requests
    assert rec.status == 0 and rec.action == "drop"


def test_drop_with_urllib3(up: FakeUpstream, pool: urllib3.PoolManager) -> None:
    up.script([Reply(action="drop")])
    with pytest.raises(urllib3.exceptions.ProtocolError):
        pool.request("POST", up.base_url + ENVELOPE_PATH, body=b"{}\n")


def test_reset_sends_rst(up: FakeUpstream) -> None:
    up.script([Reply(action="reset")])
    conn = conn_to(up)
    try:
        with pytest.raises(ConnectionResetError):
            post(conn)
    finally:
        conn.close()
    assert up.requests[0].status == 0
    assert up.requests[0].action == "reset"


def test_drop_mid_response_truncates_body(up: FakeUpstream, pool: urllib3.PoolManager) -> None:
    up.script([Reply(status=200, body=b'{"id":"0123456789"}', action="drop_mid_response")])
    conn = conn_to(up)
    try:
        resp = post(conn)
        assert resp.status == 200
        assert resp.getheader("Content-Length") == str(len(b'{"id":"0123456789"}'))
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert info.value.partial == b'{"id":"01'
    finally:
        conn.close()
    assert up.requests[0].status == 200

    up.script([Reply(action="drop_mid_response")])
    with pytest.raises(urllib3.exceptions.ProtocolError):
        pool.request("POST", up.base_url + ENVELOPE_PATH, body=b"{}\n")


def test_delay(up: FakeUpstream, pool: urllib3.PoolManager) -> None:
    up.delay_s = 0.2
    start = time.monotonic()
    assert pool.request("POST", up.base_url + ENVELOPE_PATH, body=b"{}\n").status == 200
    assert time.monotonic() - start >= 0.2
    up.delay_s = 0.0
    up.script([Reply(delay_s=0.2)])
    start = time.monotonic()
    assert pool.request("POST", up.base_url + ENVELOPE_PATH, body=b"{}\n").status == 200
    assert time.monotonic() - start >= 0.2
    # the request is recorded on arrival, before the delayed reply
    up.script([Reply(delay_s=0.5)])
    done = threading.Event()

    def slow() -> None:
        try:
            pool.request("POST", up.base_url + ENVELOPE_PATH, body=b"{}\n")
        finally:
            done.set()

    thread = threading.Thread(target=slow, daemon=True)
    thread.start()
    assert up.wait_for(lambda reqs: len(reqs) == 3, timeout=CLIENT_TIMEOUT)
    assert not done.is_set()
    thread.join(CLIENT_TIMEOUT)
    assert done.is_set()


def test_client_delay_vs_timeout(up: FakeUpstream) -> None:
    up.script([Reply(delay_s=1.0)])
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=0.2)
    try:
        with pytest.raises(socket.timeout):
            post(conn)
    finally:
        conn.close()


# ------------------------------------------------------------------------------ connections


def test_keep_alive_reuses_connection(up: FakeUpstream) -> None:
    conn = conn_to(up)
    try:
        for _ in range(3):
            resp = post(conn)
            assert resp.status == 200
            resp.read()
    finally:
        conn.close()
    assert up.connections_opened == 1
    assert up.idle_closes == 0


def test_idle_close_closes_keep_alive_connection() -> None:
    with FakeUpstream(idle_close_s=0.2) as up:
        conn = conn_to(up)
        try:
            resp = post(conn)
            assert resp.status == 200
            resp.read()
            # waiting past idle_close_s IS the scenario
            assert up.wait_for(lambda _: up.idle_closes >= 1, timeout=CLIENT_TIMEOUT)
            with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError,
                                BrokenPipeError)):
                post(conn)
        finally:
            conn.close()
        assert up.idle_closes == 1
        assert up.connections_opened == 1
        assert len(up.requests) == 1
        # a fresh connection works, and requests inside the idle window keep it alive
        conn = conn_to(up)
        try:
            for _ in range(3):
                resp = post(conn)
                assert resp.status == 200
                resp.read()
                time.sleep(0.05)  # well below idle_close_s: part of the scenario
        finally:
            conn.close()
        assert up.connections_opened == 2


def test_connection_close_header_honoured(up: FakeUpstream) -> None:
    up.script([Reply(headers={"Connection": "close"})])
    conn = conn_to(up)
    try:
        resp = post(conn)
        resp.read()
        assert resp.will_close
        resp2 = post(conn)  # http.client reconnects transparently
        assert resp2.status == 200
        resp2.read()
    finally:
        conn.close()
    assert up.connections_opened == 2


def test_wait_for_deadline_and_wakeup(up: FakeUpstream, pool: urllib3.PoolManager) -> None:
    start = time.monotonic()
    assert up.wait_for(lambda reqs: len(reqs) > 0, timeout=0.2) is False
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 2.0

    timer = threading.Timer(0.1, lambda: pool.request("POST", up.base_url + ENVELOPE_PATH,
                                                        body=b"{}\n"))
    timer.start()
    try:
        start = time.monotonic()
        assert up.wait_for(lambda reqs: len(reqs) == 1, timeout=CLIENT_TIMEOUT)
        assert time.monotonic() - start < CLIENT_TIMEOUT
    finally:
        timer.join(CLIENT_TIMEOUT)


def test_concurrent_requests(up: FakeUpstream) -> None:
    errors: List[BaseException] = []

    def worker(n: int) -> None:
        try:
            conn = conn_to(up)
            try:
                for i in range(10):
                    resp = post(conn, json.dumps({"event_id": f"{n}-{i}"}).encode() + b"\n")
                    resp.read()
                    assert resp.status == 200
            finally:
                conn.close()
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CLIENT_TIMEOUT)
    assert not errors
    assert up.wait_for(lambda reqs: len(reqs) == 80, timeout=CLIENT_TIMEOUT)
    assert up.connections_opened == 8


def test_stop_unblocks_and_dsn_format() -> None:
    up = FakeUpstream()
    up.start()
    port = up.port
    assert up.base_url == f"http://127.0.0.1:{port}"
    assert up.dsn() == f"http://{KEY}@127.0.0.1:{port}/42"
    assert up.dsn(public_key="abc", project_id="7") == f"http://abc@127.0.0.1:{port}/7"
    conn = conn_to(up)
    conn.connect()  # an idle keep-alive connection must not keep stop() waiting
    up.script([Reply(delay_s=30.0)])
    start = time.monotonic()
    up.stop()
    assert time.monotonic() - start < 3.0
    conn.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()


def test_only_loopback() -> None:
    with pytest.raises(ValueError):
        FakeUpstream(host="0.0.0.0")


# ------------------------------------------------------------------------------ real SDK


SDK_SCRIPT = """
import sys
import sentry_sdk
sentry_sdk.init(dsn=sys.argv[1], default_integrations=False, traces_sample_rate=0)
event_id = sentry_sdk.capture_message("hello from the sdk")
sentry_sdk.flush(timeout=5)
sys.stdout.write(event_id)
"""


def _sdk_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "sentry_dsn")}
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
    return env


def test_real_sentry_sdk_envelope(up: FakeUpstream) -> None:
    key = "abcdefabcdefabcdefabcdefabcdef12"
    proc = subprocess.run(
        [sys.executable, "-c", SDK_SCRIPT, up.dsn(public_key=key, project_id="1234")],
        capture_output=True, timeout=30, env=_sdk_env(), cwd=str(ROOT), check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    event_id = proc.stdout.decode().strip()
    assert up.wait_for(lambda reqs: any("event" in r.item_types for r in reqs), timeout=5)
    (rec, header, payload) = up.items("event")[0]
    assert rec.method == "POST"
    assert rec.path == "/api/1234/envelope/"
    assert rec.auth["sentry_key"] == key
    assert rec.auth["sentry_version"] == "7"
    assert rec.auth["sentry_client"].startswith("sentry.python/")
    assert rec.headers["content-encoding"] in ("gzip", "br")
    assert rec.decode_error is None
    assert rec.envelope is not None and "dsn" not in rec.envelope.header
    assert rec.envelope.event_id == event_id
    assert json.loads(payload)["message"] == "hello from the sdk"
    assert up.event_ids() == [event_id]


# ------------------------------------------------------------------------------ CLI


def _read_line_until(stream, needle: str, timeout: float) -> str:
    """Read lines from a child's pipe until one contains ``needle`` (bounded in time/count)."""
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([stream], [], [], remaining)
        if not ready:
            break
        line = stream.readline().decode(errors="replace")
        if not line:
            break
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not seen within {timeout} s")


def test_cli_serves_and_logs() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.fake_upstream", "--port", "0", "--delay-ms", "1"],
        cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_sdk_env(),
    )
    try:
        assert proc.stderr is not None
        line = _read_line_until(proc.stderr, "listening on", timeout=10)
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
        try:
            resp = post(conn, b'{}\n{"type":"event"}\n{}\n')
            resp.read()
            assert resp.status == 200
        finally:
            conn.close()
        logged = _read_line_until(proc.stderr, f"POST {ENVELOPE_PATH}", timeout=5)
        assert "-> 200 items=event" in logged
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_main_rejects_bad_args() -> None:
    with pytest.raises(SystemExit):
        main(["--port", "notanumber"])


# ------------------------------------------------------------------------------ log items

GOOD_LOG = {"timestamp": 1795847575.5, "trace_id": "771a43a4192642f0b136d5159a501700", "level": "warn",
            "body": "careful", "severity_number": 13, "span_id": "b0e6f15b45c36b12",
            "attributes": {"n": {"value": 3, "type": "integer"}, "r": {"value": 0.5, "type": "double"},
                           "ok": {"value": True, "type": "boolean"}, "s": {"value": "x", "type": "string"}}}
LOG_HEADER = {"type": "log", "item_count": 1, "content_type": "application/vnd.sentry.items.log+json"}


def test_log_item_problems_accepts_a_valid_item() -> None:
    assert log_item_problems(LOG_HEADER, json.dumps({"items": [GOOD_LOG]}).encode()) == []


@pytest.mark.parametrize("header_change,log_change,problem", [
    ({"content_type": "application/json"}, {}, "content_type"),
    ({"item_count": 2}, {}, "item_count"),
    ({}, {"trace_id": "771A43A4192642F0B136D5159A501700"}, "trace_id"),
    ({}, {"span_id": "short"}, "span_id"),
    ({}, {"level": "warning"}, "level"),
    ({}, {"severity_number": 17}, "severity_number"),
    ({}, {"timestamp": "2026-11-28T06:32:55Z"}, "timestamp"),
    ({}, {"body": None}, "body"),
    ({}, {"attributes": {"n": 3}}, "attribute 'n'"),
    ({}, {"attributes": {"n": {"value": "3", "type": "integer"}}}, "attribute 'n'"),
    ({}, {"attributes": {"b": {"value": True, "type": "integer"}}}, "attribute 'b'"),
])
def test_log_item_problems_names_each_violation(header_change: dict, log_change: dict, problem: str) -> None:
    problems = log_item_problems(dict(LOG_HEADER, **header_change),
                                 json.dumps({"items": [dict(GOOD_LOG, **log_change)]}).encode())
    assert len(problems) == 1 and problem in problems[0], problems


def test_log_item_problems_payload_and_count_limits() -> None:
    assert "not JSON" in log_item_problems(LOG_HEADER, b"{")[0]
    assert "no 'items'" in log_item_problems(LOG_HEADER, b"[]")[0]
    many = json.dumps({"items": [GOOD_LOG] * 101}).encode()
    assert any("101 logs" in p for p in log_item_problems(dict(LOG_HEADER, item_count=101), many))


SDK_LOG_SCRIPT = """
import sys
import sentry_sdk
import sentry_sdk.logger
sentry_sdk.init(dsn=sys.argv[1], default_integrations=False, enable_logs=True)
sentry_sdk.logger.error("sdk log {n}", n=1)
sentry_sdk.flush(timeout=5)
"""


def test_logs_of_the_real_sdk_are_valid(up: FakeUpstream) -> None:
    proc = subprocess.run([sys.executable, "-c", SDK_LOG_SCRIPT, up.dsn(project_id="1234")],
                          capture_output=True, timeout=30, env=_sdk_env(), cwd=str(ROOT), check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert up.wait_for(lambda reqs: any("log" in r.item_types for r in reqs), timeout=5)
    (log,) = up.logs()
    assert log["level"] == "error" and log["body"] == "sdk log 1"
