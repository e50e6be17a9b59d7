"""Rate limits mirrored at ingest, envelope rewriting, and client reports reaching the fake upstream."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import threading
import zlib
from typing import Callable, Dict, List, Tuple

import pytest

from helpers import KEY, PROJECT, StartPipeline, auth, envelope, port_of, post, wait_until
from sentry_ext.protocol.envelope import Envelope, EnvelopeError
from sentry_ext.protocol.body import decode_body, encode_body
from sentry_ext.pipeline import Pipeline
from tools.fake_upstream import FakeUpstream, Recorded, Reply, decode_body as fake_decode

ENV_HEADER = (b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","sent_at":"2024-01-01T00:00:00.000Z",'
              b'"trace":{"trace_id":"771a43a4192642f0b136d5159a501700","public_key":"%s","sample_rate":"1.0"},'
              b'"x_custom":{"kept":[1,2.50,"\\u00e9"]}}' % KEY.encode())
EVENT = b'{"message":"limited","level":"error"}'
ATTACHMENT = b"line one\nline two\r\n\x00binary"
CUSTOM = b'{"future":true}'
MIXED = (ENV_HEADER + b"\n"
         + b'{"type":"event","length":%d}\n' % len(EVENT) + EVENT + b"\n"
         + b'{"type":"attachment","length":%d,"filename":"a.txt","x_extra":"kept"}\n' % len(ATTACHMENT)
         + ATTACHMENT + b"\n"
         + b'{"type":"future_item","x_key":[1]}\n' + CUSTOM + b"\n")  # no length: runs to the newline


def raw_deflate(data: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    return comp.compress(data) + comp.flush()


ENCODINGS: List[Tuple[str, Callable[[bytes], bytes]]] = [
    ("", lambda b: b), ("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", raw_deflate)]


def limit(pipe: Pipeline, header: str) -> None:
    """Install limits as if upstream had just answered with ``header``."""
    assert pipe.limits.update(KEY, 429, {"X-Sentry-Rate-Limits": header})


def reports(upstream: FakeUpstream) -> Dict[Tuple[str, str], int]:
    """Sum of every client_report the extension (not the SDK) got accepted upstream."""
    total: Dict[Tuple[str, str], int] = {}
    for record, _header, payload in upstream.items("client_report"):
        if record.status != 200 or "sentry-lambda-extension" not in record.auth.get("sentry_client", ""):
            continue
        for e in json.loads(payload)["discarded_events"]:
            total[(e["reason"], e["category"])] = total.get((e["reason"], e["category"]), 0) + e["quantity"]
    return total


def sdk_requests(upstream: FakeUpstream) -> List[Recorded]:
    return [r for r in upstream.requests if "client_report" not in r.item_types]


@pytest.fixture
def pipe(pipelines: StartPipeline) -> Pipeline:
    return pipelines()


# -- the rewriting pieces ---------------------------------------------------------------------


@pytest.mark.parametrize("encoding,encode", ENCODINGS)
def test_decode_encode_round_trip_keeps_the_framing(encoding: str, encode: Callable[[bytes], bytes]) -> None:
    original = encode(MIXED)
    assert decode_body(original, encoding, 1 << 20) == MIXED
    again = encode_body(MIXED, encoding, original)
    assert fake_decode(again, encoding) == MIXED
    if encoding == "deflate":  # zlib-wrapped stays wrapped, raw stays raw
        assert (again[:1] == b"\x78") == (original[:1] == b"\x78")


def test_decode_body_is_bounded() -> None:
    bomb = gzip.compress(b"x" * (5 << 20))
    with pytest.raises(EnvelopeError):
        decode_body(bomb, "gzip", 1 << 20)
    with pytest.raises(EnvelopeError):
        decode_body(b"x" * 100, "", 99)
    with pytest.raises(EnvelopeError):
        decode_body(b"\x28\xb5\x2f\xfd", "zstd", 1 << 20)
    assert decode_body(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 10) == b"abcd"  # two members


def test_serialize_keeps_header_lines_and_fixes_lengths() -> None:
    env = Envelope.parse(MIXED)
    env.items = env.items[1:]
    out = env.serialize()
    assert out.split(b"\n", 1)[0] == ENV_HEADER  # byte for byte, escapes and number spelling included
    again = Envelope.parse(out)
    assert [(i.type, i.payload) for i in again.items] == [("attachment", ATTACHMENT), ("future_item", CUSTOM)]
    assert again.items[0].header_line == (b'{"type":"attachment","length":%d,"filename":"a.txt","x_extra":"kept"}'
                                          % len(ATTACHMENT))
    assert again.items[1].headers == {"type": "future_item", "x_key": [1], "length": len(CUSTOM)}


# -- ingest against a live pipeline -------------------------------------------------------------


@pytest.mark.parametrize("encoding,encode", ENCODINGS)
def test_mixed_envelope_is_split(pipe: Pipeline, upstream: FakeUpstream, encoding: str,
                                 encode: Callable[[bytes], bytes]) -> None:
    limit(pipe, "60:error:key")
    body = encode(MIXED)
    headers = dict(auth(), **({"Content-Encoding": encoding} if encoding else {}))
    status, reply_headers, answer = post(port_of(pipe), "/api/42/envelope/", body, headers)
    assert status == 200 and answer == {"id": "9ec79c33ec9942ab8353589fcb2e04dc"}
    assert re.fullmatch(r"(60|59):error:key", reply_headers["x-sentry-rate-limits"])  # mirrored to the SDK
    assert upstream.wait_for(lambda reqs: len(reqs) == 1, 5)
    rec = upstream.requests[0]
    assert rec.decode_error is None and rec.envelope is not None
    assert rec.headers.get("content-encoding", "") == encoding
    if encoding == "deflate":
        assert (rec.raw_body[:1] == b"\x78") == (body[:1] == b"\x78")
    assert rec.body.split(b"\n", 1)[0] == ENV_HEADER
    assert rec.envelope.item_types == ["attachment", "future_item"]
    assert [p for _, p in rec.envelope.items] == [ATTACHMENT, CUSTOM]
    assert rec.envelope.items[0][0] == {"type": "attachment", "length": len(ATTACHMENT), "filename": "a.txt",
                                        "x_extra": "kept"}
    assert rec.envelope.items[1][0] == {"type": "future_item", "x_key": [1], "length": len(CUSTOM)}
    assert pipe.discards.snapshot(KEY) == {("ratelimit_backoff", "error"): 1}
    assert pipe.stats.get("items_ratelimited") == 1
    assert pipe.flush(5)
    assert reports(upstream) == {("ratelimit_backoff", "error"): 1}


def test_unaffected_envelope_is_forwarded_byte_for_byte(pipe: Pipeline, upstream: FakeUpstream) -> None:
    limit(pipe, "60:transaction:key")
    body = gzip.compress(MIXED)
    status, reply_headers, _ = post(port_of(pipe), "/api/42/envelope/", body,
                                    dict(auth(), **{"Content-Encoding": "gzip"}))
    assert status == 200 and "transaction" in reply_headers["x-sentry-rate-limits"]
    assert upstream.wait_for(lambda reqs: len(reqs) == 1, 5)
    assert upstream.requests[0].raw_body == body
    assert not pipe.discards.has_pending


def test_fully_limited_envelope_gets_429_with_the_active_limits(pipe: Pipeline, upstream: FakeUpstream) -> None:
    limit(pipe, "60:error;default:key, 30:transaction:key")
    status, headers, answer = post(port_of(pipe), "/api/42/envelope/", gzip.compress(envelope("e" * 32)),
                                   dict(auth(), **{"Content-Encoding": "gzip"}))
    assert status == 429 and "detail" in answer
    assert headers["retry-after"] in ("60", "59")
    assert re.fullmatch(r"(60|59):default;error:key, (30|29):transaction:key", headers["x-sentry-rate-limits"])
    # a legacy store request is an error too
    status, _, _ = post(port_of(pipe), "/api/42/store/", b'{"message":"x"}', auth())
    assert status == 429
    assert pipe.stats.dropped("ratelimit_backoff") == 2 and pipe.stats.snapshot()["rejected"]["429"] == 2
    assert pipe.discards.snapshot(KEY) == {("ratelimit_backoff", "error"): 2}
    assert pipe.flush(5)
    assert sdk_requests(upstream) == []
    assert reports(upstream) == {("ratelimit_backoff", "error"): 2}


def test_upstream_limits_are_learnt_from_replies_and_expire(pipe: Pipeline, upstream: FakeUpstream) -> None:
    # a 200 carrying the header (Sentry does that) is enough; the limit is short so it expires here
    upstream.script([Reply(200, headers={"X-Sentry-Rate-Limits": "1:error:key"})])
    port = port_of(pipe)
    assert post(port, "/api/42/envelope/", envelope("1" * 32, item_type="transaction"), auth())[0] == 200
    assert wait_until(lambda: pipe.limits.is_limited(KEY, "error"), 5)
    status, headers, _ = post(port, "/api/42/envelope/", envelope("2" * 32), auth())
    assert (status, headers["x-sentry-rate-limits"], headers["retry-after"]) == (429, "1:error:key", "1")
    assert wait_until(lambda: not pipe.limits.is_limited(KEY, "error"), 3)
    status, headers, _ = post(port, "/api/42/envelope/", envelope("3" * 32), auth())
    assert status == 200 and "x-sentry-rate-limits" not in headers
    assert upstream.wait_for(lambda reqs: len(reqs) == 2, 5)
    assert [r.envelope.event_id for r in upstream.requests] == ["1" * 32, "3" * 32]


def test_upstream_429_is_not_reported_and_bare_429_limits_everything(pipe: Pipeline,
                                                                      upstream: FakeUpstream) -> None:
    upstream.script([Reply(429)])  # neither header: 60 s for every category
    port = port_of(pipe)
    assert post(port, "/api/42/envelope/", envelope("1" * 32), auth())[0] == 200
    assert wait_until(lambda: pipe.limits.is_limited(KEY, "transaction"), 5)
    # the sender counts the drop just after the reply's limits are stored: wait for it too
    assert wait_until(lambda: pipe.stats.dropped("ratelimited_upstream") == 1, 5)
    assert not pipe.discards.has_pending
    # everything is refused now, even a body we cannot look into
    status, headers, _ = post(port, "/api/42/envelope/", b"\x1b\x00\x00brotli?",
                              dict(auth(), **{"Content-Encoding": "br"}))
    assert status == 429 and re.fullmatch(r"(60|59)::key", headers["x-sentry-rate-limits"])
    assert pipe.discards.snapshot(KEY) == {("ratelimit_backoff", "default"): 1}


def test_br_body_is_forwarded_untouched_under_category_limits(pipe: Pipeline, upstream: FakeUpstream) -> None:
    limit(pipe, "60:error:key")
    body = b"\x1b\x00\x00not-really-brotli\x03"
    status, _, _ = post(port_of(pipe), "/api/42/envelope/", body, dict(auth(), **{"Content-Encoding": "br"}))
    assert status == 200
    assert upstream.wait_for(lambda reqs: len(reqs) == 1, 5)
    assert upstream.requests[0].raw_body == body and upstream.requests[0].headers["content-encoding"] == "br"


# -- client reports for our own drops ---------------------------------------------------------


def test_client_reports_after_a_queue_overflow(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    upstream.delay_s = 0.3
    p = pipelines(SENTRY_EXT_QUEUE_MAX_ITEMS="2", SENTRY_EXT_SENDERS="1")
    port = port_of(p)
    tx = json.dumps({"type": "transaction", "spans": [{}, {}]}).encode()
    bodies = [envelope("%032x" % i) for i in range(4)] + [gzip.compress(envelope("f" * 32, item_type="transaction",
                                                                                 payload=tx))]
    statuses = []
    for i, body in enumerate(bodies):
        headers = dict(auth(), **({"Content-Encoding": "gzip"} if i == 4 else {}))
        statuses.append(post(port, "/api/42/envelope/", body, headers)[0])
    assert statuses == [200, 200, 429, 429, 429]
    expected = {("queue_overflow", "error"): 2, ("queue_overflow", "transaction"): 1,
                ("queue_overflow", "span"): 3}
    # counted right after the 429 is written, so the reply is never delayed by the counting
    assert wait_until(lambda: p.discards.snapshot(KEY) == expected, 5)
    upstream.delay_s = 0
    assert p.flush(10)
    assert len(sdk_requests(upstream)) == 2
    assert reports(upstream) == expected
    assert len(upstream.items("client_report")) == 1  # batched: one report, not one per drop


def test_client_reports_after_an_outage_and_no_report_loop(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    upstream.default = Reply(action="reset")
    p = pipelines(SENTRY_EXT_MAX_ATTEMPTS="2", SENTRY_EXT_SENDERS="1")
    port = port_of(p)
    for i in range(2):
        assert post(port, "/api/42/envelope/", envelope("%032x" % i), auth())[0] == 200
    assert p.flush(10)
    # a sender releases a request (which ends the flush), then counts the drop, then records it
    # for the client report: wait for the last of those
    assert wait_until(lambda: p.discards.snapshot(KEY) == {("network_error", "error"): 2}, 5), p.discards.snapshot(KEY)
    assert p.stats.dropped("network_error") == 2
    # still down: the report itself is lost, and that loss is not reported again
    assert p.flush(10)
    assert wait_until(lambda: p.stats.dropped("network_error") == 3, 5), p.stats.snapshot()
    assert not p.discards.has_pending
    assert post(port, "/api/42/envelope/", envelope("9" * 32), auth())[0] == 200
    assert p.flush(10)
    # recorded for the next report only just after this flush ended (see above)
    assert wait_until(lambda: p.discards.snapshot(KEY) == {("network_error", "error"): 1}, 5), p.discards.snapshot(KEY)
    # upstream is back: the next flush carries the report
    upstream.default = Reply(200)
    p.forwarder.health.success()
    p.queue.resume()
    assert p.flush(10)
    assert reports(upstream) == {("network_error", "error"): 1}
    assert p.stats.get("client_reports") == 2  # one lost in the outage, one delivered


# -- the real sentry-sdk ----------------------------------------------------------------------

SDK_SCRIPT = r"""
import sys
import sentry_sdk

sentry_sdk.init(dsn=sys.argv[1], traces_sample_rate=1.0, default_integrations=False,
                auto_enabling_integrations=False, send_client_reports=True)

def send(kind, n):
    if kind == "error":
        sentry_sdk.capture_message("error %d" % n, level="error")
    else:
        with sentry_sdk.start_transaction(name="tx %d" % n, op="test"):
            with sentry_sdk.start_span(op="child"):
                pass
    sentry_sdk.flush(timeout=5)

send("error", 1)
print("first-error-sent", flush=True)
sys.stdin.readline()
for kind, n in (("error", 2), ("transaction", 1), ("error", 3), ("transaction", 2), ("error", 4)):
    send(kind, n)
print("done", flush=True)
"""


def test_real_sdk_stops_errors_but_keeps_sending_transactions(pipe: Pipeline, upstream: FakeUpstream) -> None:
    pytest.importorskip("sentry_sdk")
    upstream.script([Reply(429, headers={"X-Sentry-Rate-Limits": "60:error:key"})])
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    dsn = "http://%s@127.0.0.1:%d/%s" % (KEY, port_of(pipe), PROJECT)
    proc = subprocess.Popen([sys.executable, "-c", SDK_SCRIPT, dsn], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    killer = threading.Timer(30, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "first-error-sent"
        assert wait_until(lambda: pipe.limits.is_limited(KEY, "error"), 5)  # upstream answered 429
        out, err = proc.communicate("go\n", timeout=25)
        assert proc.returncode == 0 and out.strip() == "done", err
    finally:
        killer.cancel()
        proc.kill()
    assert pipe.flush(5)
    messages = [json.loads(p)["message"] if "message" in json.loads(p) else json.loads(p)["logentry"]["message"]
                for _, _, p in upstream.items("event")]
    assert messages == ["error 1"]  # the one upstream limited; nothing after it
    assert len(upstream.items("transaction")) == 2
    # error 2 reached us and got our 429 with the limits; errors 3 and 4 the SDK dropped itself
    assert pipe.stats.dropped("ratelimit_backoff") == 1
    assert reports(upstream) == {("ratelimit_backoff", "error"): 1}
    sdk_lost: Dict[Tuple[str, str], int] = {}
    for record, _, payload in upstream.items("client_report"):
        if record.auth.get("sentry_client", "").startswith("sentry.python"):
            for e in json.loads(payload)["discarded_events"]:
                key = (e["reason"], e["category"])
                sdk_lost[key] = sdk_lost.get(key, 0) + e["quantity"]
    assert sdk_lost.get(("ratelimit_backoff", "error")) == 2
