"""Only Lambda talks to the Telemetry listener: the secret path, the bind address, and the
ingest's hostile-input treatment (body cap, nesting bound, slow clients, connection cap, bounded
memory, fuzzing). Spoofed records on any other path are refused unread and change nothing."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any, Iterator, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2e import ext_log, extension_events, make_emulator
from helpers import KEY, PROJECT, Errors, exchange, make_pipeline, proc_status, stop, wait_until
from sentry_ext import main
from sentry_ext.awslambda import telemetry_listener as telemetry, telemetry_address as telemetry_endpoint
from sentry_ext.config import load
from sentry_ext.main import bind_listener
from sentry_ext.util.stats import Stats
from sentry_ext.insight.invocations import Invocations
from sentry_ext.insight.failures import Failure
from sentry_ext.awslambda.telemetry_listener import TelemetryListener, within_depth
from sentry_ext.awslambda.telemetry_records import parse_batch
from tools.fake_upstream import FakeUpstream

ANSWER_WITHIN_S = 5.0
SPOOF_PATHS = ["/", "/telemetry", "/telemetry/", "/lambda", "/events", "/logs", "/telemetry/" + "0" * 32]


class Live:
    """A started listener feeding per-request state as the pipeline does, with the batches it handed on."""

    def __init__(self) -> None:
        self.failures: List[Failure] = []
        self.invocations = Invocations(self.failures.append)
        self.batches: List[List[Any]] = []
        self.stats = Stats()
        self.listener = TelemetryListener(bind_listener("127.0.0.1", 0), self._on_batch, self.stats)
        self.listener.start()
        self.port = self.listener.server_address[1]

    def _on_batch(self, batch: List[Any]) -> None:
        self.batches.append(batch)
        self.invocations.feed(parse_batch(batch))

    def stop(self) -> None:
        self.listener.shutdown()
        self.listener.server_close()


@pytest.fixture
def live() -> Iterator[Live]:
    listener = Live()
    try:
        yield listener
    finally:
        listener.stop()


def runtime_done(request_id: str = "req-1", status: str = "success") -> bytes:
    record = {"requestId": request_id, "status": status}
    if status != "success":
        record["errorType"] = "Sandbox.Timedout"
    return json.dumps([{"time": "2026-11-28T08:00:00.000Z", "type": "platform.runtimeDone", "record": record}]).encode()


def spoofs(request_id: str) -> List[bytes]:
    """What a process could try to post: an early end, a fake timeout with its report, a log line."""
    report = {"requestId": request_id, "status": "timeout", "errorType": "Sandbox.Timedout",
              "metrics": {"durationMs": 3000.0, "billedDurationMs": 3000, "memorySizeMB": 128, "maxMemoryUsedMB": 60}}
    return [runtime_done(request_id), runtime_done(request_id, "timeout"),
            json.dumps([{"time": "2026-11-28T08:00:00.000Z", "type": "platform.report", "record": report},
                        {"time": "2026-11-28T08:00:00.000Z", "type": "function",
                         "record": "[ERROR] fake line for %s" % request_id}]).encode()]


def request(port: int, data: bytes, half_close: bool = False, timeout: float = ANSWER_WITHIN_S) -> Tuple[bytes, bool]:
    """Send raw ``data``; (what came back, whether the server closed the connection)."""
    return exchange(port, data, half_close, timeout)


def post(port: int, path: str, body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
        path.encode(), len(body), extra)
    reply, _ = request(port, head + body, half_close=True)
    return reply


def status_of(reply: bytes) -> int:
    """The final status (after any "100 Continue"); 0 if the reply has no status line."""
    while reply.startswith(b"HTTP/1.1 100 "):
        reply = reply.partition(b"\r\n\r\n")[2]
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else 0


# -- the secret path -----------------------------------------------------------------------


def test_paths_are_fresh_128_bit_secrets() -> None:
    paths = {telemetry_endpoint.new_path() for _ in range(100)}
    assert len(paths) == 100
    for path in paths:
        assert path.startswith("/telemetry/") and len(path) == len("/telemetry/") + 32
        int(path.rsplit("/", 1)[1], 16)


def test_only_the_secret_path_reaches_the_records(live: Live) -> None:
    for path in SPOOF_PATHS + [live.listener.path + "/", live.listener.path + "?x=1", live.listener.path[:-1]]:
        assert status_of(post(live.port, path, runtime_done())) == 404, path
    assert live.batches == [] and not live.invocations.wait("req-1", time.monotonic())
    assert live.stats.get("telemetry_refused") == len(SPOOF_PATHS) + 3
    assert status_of(post(live.port, live.listener.path, runtime_done())) == 200
    assert live.invocations.wait("req-1", time.monotonic())


def test_refusals_are_logged_once_not_per_batch(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    """AWS's RIE in Managed Instances mode posts every batch to the listener's address without the
    subscribed path: each is refused and counted, and the log says so once, not per batch."""
    caplog.set_level(logging.DEBUG, logger="sentry_ext")
    for _ in range(5):
        assert status_of(post(live.port, "/", runtime_done())) == 404
    assert live.stats.get("telemetry_refused") == 5 and live.batches == []
    refused = [r for r in caplog.records if r.name == "sentry_ext.awslambda.telemetry_listener" and "refused" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    assert refused[0].levelno == logging.WARNING and "POST '/': 404" in refused[0].getMessage()
    assert "Managed Instances" in refused[0].getMessage()
    reply, _ = request(live.port, b"GET /x HTTP/1.1\r\n\r\n")  # another reason: its own one line
    assert status_of(reply) == 404
    assert status_of(post(live.port, live.listener.path, b"x" * (telemetry.MAX_BATCH_BYTES + 1))) == 413
    assert status_of(post(live.port, live.listener.path, b"x" * (telemetry.MAX_BATCH_BYTES + 1))) == 413
    refused = [r for r in caplog.records if r.name == "sentry_ext.awslambda.telemetry_listener" and "refused" in r.getMessage()]
    assert [r.getMessage().split(": ", 1)[1][:3] for r in refused] == ["404", "413"]
    assert live.stats.get("telemetry_refused") == 8


def test_a_wrong_path_is_answered_without_reading_the_body(live: Live) -> None:
    # The body announced is never sent: the answer comes from the headers alone, and the server closes.
    reply, closed = request(live.port, b"POST /telemetry HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
    assert status_of(reply) == 404 and closed
    for method in (b"GET", b"PUT", b"DELETE"):
        reply, closed = request(live.port, b"%s /logs HTTP/1.1\r\nContent-Length: 5\r\n\r\n" % method)
        assert status_of(reply) == 404 and closed
    reply, _ = request(live.port, b"GET %s HTTP/1.1\r\n\r\n" % live.listener.path.encode())
    assert status_of(reply) == 405
    reply, closed = request(live.port, b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404") and closed  # no "100 Continue" invites the body


def test_spoofed_records_on_wrong_paths_end_no_wait_and_make_no_event(upstream: FakeUpstream) -> None:
    ext = main.Extension(load({"SENTRY_DSN": upstream.dsn(KEY, PROJECT)}), "test-ext")
    pipeline = make_pipeline(upstream.dsn(KEY, PROJECT), start=False, flush_control=ext.flush_control)
    pipeline.listener = TelemetryListener(bind_listener("127.0.0.1", 0), pipeline.on_telemetry, pipeline.stats)
    pipeline.start()
    ext.pipeline = pipeline
    ext.ready.set()
    port = pipeline.listener.server_address[1]
    try:
        assert status_of(post(port, pipeline.listener.path, json.dumps(
            [{"type": "platform.start", "record": {"requestId": "r1"}}]).encode())) == 200
        finished = threading.Event()
        waiter = threading.Thread(target=lambda: (ext.on_invoke(
            {"eventType": "INVOKE", "requestId": "r1", "deadlineMs": (time.time() + 20) * 1000}), finished.set()))
        waiter.start()
        for path in SPOOF_PATHS:
            for body in spoofs("r1"):
                assert status_of(post(port, path, body)) == 404
        # Scenario time: the spoofed records had their chance to end the wait early.
        assert not finished.wait(0.5)
        assert pipeline.stats.get("flushes") == 0
        assert status_of(post(port, pipeline.listener.path, runtime_done("r1"))) == 200
        assert finished.wait(5)
        waiter.join(5)
        assert pipeline.stats.get("flushes") == 1 and ext.flush_control.mode == "end"
        assert pipeline.stats.get("failure_events") == 0 and upstream.requests == []  # no fake timeout event
    finally:
        stop(pipeline)


# -- bind address --------------------------------------------------------------------------


def test_bind_address_is_what_sandbox_localdomain_resolves_to() -> None:
    calls = []

    def resolver(name: bytes, *args: Any) -> Any:
        calls.append(name)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]

    sock, note = telemetry_endpoint.bind("sandbox.localdomain", 0, bind_listener, resolver=resolver)
    try:
        assert sock.getsockname()[0] == "127.0.0.1" and "resolves to" in note
        assert calls == [b"sandbox.localdomain"]  # bytes: no idna codec on the start-up path
    finally:
        sock.close()


@pytest.mark.parametrize("behaviour", ["hangs", "fails", "unbindable"])
def test_bind_falls_back_to_loopback_without_holding_init(behaviour: str) -> None:
    """sandbox.localdomain unresolvable (slow or failing resolver) or its address not ours: the
    listener binds 127.0.0.1, never all interfaces (0.0.0.0 would expose it beyond the sandbox)."""
    release = threading.Event()

    def resolver(name: bytes, *args: Any) -> Any:
        if behaviour == "hangs":
            release.wait(10)
        if behaviour == "fails":
            raise socket.gaierror(-2, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 0))]  # TEST-NET: not ours

    t0 = time.monotonic()
    sock, note = telemetry_endpoint.bind("sandbox.localdomain", 0, bind_listener, timeout=0.1, resolver=resolver)
    elapsed = time.monotonic() - t0
    release.set()
    try:
        assert sock.getsockname()[0] == "127.0.0.1" and "bound to 127.0.0.1:" in note, note
        assert elapsed < 1.0
    finally:
        sock.close()


def test_an_unresolvable_sandbox_localdomain_still_gets_telemetry_on_loopback(tmp_path: Any,
                                                                             upstream: FakeUpstream) -> None:
    """The default host, on a machine where sandbox.localdomain does not resolve (as in a container
    under AWS's RIE): the listener binds 127.0.0.1, the subscription URI still names
    sandbox.localdomain, and the emulator (which posts that host to 127.0.0.1, as RIE does)
    delivers the records: a timeout becomes a failure event."""
    if telemetry_endpoint.from_hosts("sandbox.localdomain") or telemetry_endpoint.resolve("sandbox.localdomain", 1.0):
        pytest.skip("sandbox.localdomain resolves on this machine")
    with make_emulator(tmp_path, upstream, timeout_s=1.0, SENTRY_EXT_TELEMETRY_HOST="sandbox.localdomain",
                       SENTRY_EXT_LOG_LEVEL="DEBUG") as emu:
        emu.start()
        assert emu._sandbox is not None
        uris = [sub.uri for sub in emu._sandbox.subscribers]
        result = emu.invoke({"sleep_s": 5})
        assert result.status == "timeout"
        assert upstream.wait_for(lambda _: len(extension_events(upstream)) == 1, 10), ext_log(emu)
        log = ext_log(emu)
    assert "telemetry listener bound to 127.0.0.1:" in log and "did not resolve" in log, log
    assert "0.0.0.0" not in log and "falling back" not in log, log
    assert len(uris) == 1 and uris[0].startswith("http://sandbox.localdomain:"), uris
    assert extension_events(upstream)[0]["exception"]["values"][0]["type"] == "LambdaTimeout"


def test_the_hosts_file_answers_first(tmp_path: Any) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n# 10.0.0.9 sandbox.localdomain\n::1 sandbox.localdomain\n"
                     "169.254.100.1\tsandbox.localdomain sandbox  # Lambda's\n")
    assert telemetry_endpoint.from_hosts("sandbox.localdomain", str(hosts)) == "169.254.100.1"
    assert telemetry_endpoint.from_hosts("SANDBOX.localdomain", str(hosts)) == "169.254.100.1"
    assert telemetry_endpoint.from_hosts("elsewhere", str(hosts)) is None
    assert telemetry_endpoint.from_hosts("sandbox.localdomain", str(tmp_path / "missing")) is None


def test_a_configured_host_is_bound_as_it_is() -> None:
    host, why = telemetry_endpoint.bind_address("127.0.0.1", resolver=lambda *a: pytest.fail("no lookup"))
    assert host == "127.0.0.1"


# -- hostile input -------------------------------------------------------------------------


def test_oversized_malformed_and_deep_batches_are_refused(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    path = live.listener.path
    reply, closed = request(live.port, b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (
        path.encode(), telemetry.MAX_BATCH_BYTES + 1))
    assert status_of(reply) == 413 and closed
    reply, _ = request(live.port, b"POST %s HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % path.encode())
    assert status_of(reply) == 411
    assert status_of(post(live.port, path, b"[]", b"Content-Length: 3\r\n")) == 411  # two lengths
    for body in (b"{not json", b'{"type": "platform.runtimeDone"}', b"\xff\xfe", b"[" * 200000, b'"x"'):
        assert status_of(post(live.port, path, body)) == 400, body[:20]
    deep = {"type": "platform.start", "record": {"requestId": "deep"}}
    inner: Any = deep["record"]
    for _ in range(telemetry.MAX_DEPTH):
        inner["x"] = {}
        inner = inner["x"]
    fine = {"type": "platform.start", "record": {"requestId": "fine", "x": [[1]]}}
    assert status_of(post(live.port, path, json.dumps([deep, fine]).encode())) == 200
    assert live.batches[-1] == [fine]
    assert live.stats.get("telemetry_records_too_deep") == 1
    # decoded as json.loads decodes bytes: UTF-8 (non-ASCII kept), or UTF-16/32 by their leading bytes
    batch = [{"type": "function", "time": "t", "record": "naïve ☃ \U0001F600\n"}]
    for encoding in ("utf-8", "utf-16", "utf-32-le"):
        assert status_of(post(live.port, path, json.dumps(batch, ensure_ascii=False).encode(encoding))) == 200
        assert live.batches[-1] == batch, encoding
    assert not live.invocations.wait("deep", time.monotonic(), ("start",))


def test_depth_check_is_iterative() -> None:
    value: Any = 1
    for _ in range(100000):
        value = [value]
    assert not within_depth(value, 32)
    assert within_depth([{"a": [1, {"b": 2}]}], 4) and not within_depth([{"a": [1, {"b": 2}]}], 3)
    # The deepest branch counts, wherever it is; scalars are depth 0, an empty container depth 1.
    assert not within_depth({"a": 1, "b": [[]], "c": {}}, 2) and within_depth({"a": 1, "b": [[]], "c": {}}, 3)
    assert within_depth("text", 0) and not within_depth([], 0) and within_depth([], 1)


def test_slow_clients_are_cut_off(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "CLIENT_TIMEOUT_S", 0.3)
    t0 = time.monotonic()
    # A request trickled in: headers never finish.
    reply, closed = request(live.port, b"POST %s HTTP/1.1\r\nContent-Le" % live.listener.path.encode())
    assert closed and time.monotonic() - t0 < 3
    # A body announced but not sent: the reservation is released when the client is cut off.
    reply, closed = request(live.port, b"POST %s HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{" % live.listener.path.encode())
    assert closed
    assert wait_until(lambda: live.listener.reserve(telemetry.MAX_READING_BYTES), 3)


def test_a_connection_flood_cannot_keep_lambda_out(live: Live) -> None:
    flood = [socket.create_connection(("127.0.0.1", live.port)) for _ in range(telemetry.MAX_CONNECTIONS * 3)]
    try:
        # Scenario time: the flood has been idle long enough to be evicted at the cap.
        time.sleep(telemetry.EVICT_AFTER_S * 2)
        served = 0
        for index in range(3):
            served += status_of(post(live.port, live.listener.path, runtime_done("r%d" % index))) == 200
        assert served == 3
        assert live.stats.get("telemetry_connections_evicted") + live.stats.get("telemetry_connections_refused") > 0
    finally:
        for sock in flood:
            sock.close()


def test_bodies_in_reading_are_bounded(live: Live) -> None:
    # Every slot announces a maximal body and stalls: at most MAX_READING_BYTES are reserved, the rest get 503.
    socks = []
    try:
        for _ in range(telemetry.MAX_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", live.port), timeout=5)
            sock.sendall(b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n{" % (
                live.listener.path.encode(), telemetry.MAX_BATCH_BYTES))
            socks.append(sock)
        limit = telemetry.MAX_READING_BYTES // telemetry.MAX_BATCH_BYTES
        refused = []
        for sock in socks:
            sock.settimeout(0.3)
            try:
                refused.append(sock.recv(100).startswith(b"HTTP/1.1 503"))
            except socket.timeout:
                refused.append(False)
        assert refused.count(False) <= limit and refused.count(True) >= len(socks) - limit
        assert live.listener._reading_bytes <= telemetry.MAX_READING_BYTES
    finally:
        for sock in socks:
            sock.close()


# -- fuzzing -------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
records = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                       max_leaves=30)
typed = st.fixed_dictionaries({"type": st.sampled_from(["platform.start", "platform.runtimeDone", "platform.report",
                                                         "platform.restoreStart", "function", "x"]),
                               "record": records, "time": records})


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Tuple[Live, Errors]]:
    errors = Errors()
    logger = logging.getLogger("sentry_ext")
    logger.addHandler(errors)
    listener = Live()
    try:
        yield listener, errors
    finally:
        logger.removeHandler(errors)
        listener.stop()


@FUZZ
@given(path=st.one_of(st.sampled_from(SPOOF_PATHS), st.text(max_size=40).map(lambda t: "/" + t.replace(" ", ""))),
       body=st.one_of(st.binary(max_size=300), st.lists(typed, max_size=5).map(lambda v: json.dumps(v).encode())))
def test_fuzz_wrong_paths_change_nothing(fuzzed: Tuple[Live, Errors], path: str, body: bytes) -> None:
    live, errors = fuzzed
    before = len(live.batches)
    reply = post(live.port, path, body)
    assert status_of(reply) in (0, 400, 404), reply[:100]  # 0: http.server's bare answer to a broken request line
    assert len(live.batches) == before and not errors.records


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), records.map(lambda v: json.dumps(v).encode()),
                      st.lists(typed, max_size=8).map(lambda v: json.dumps(v).encode())),
       extra=st.sampled_from([b"", b"Connection: close\r\n", b"Expect: 100-continue\r\n", b"Content-Length: 3\r\n"]))
def test_fuzz_the_secret_path_answers_every_batch(fuzzed: Tuple[Live, Errors], body: bytes, extra: bytes) -> None:
    live, errors = fuzzed
    reply = post(live.port, live.listener.path, body, extra)
    assert status_of(reply) in (200, 400, 411), reply[:100]
    assert not errors.records
    assert status_of(post(live.port, live.listener.path, b"[]")) == 200  # still serving


@pytest.mark.parametrize("raw", [b"\x00\x01\x02", b"GET\r\n\r\n", b"POST " + b"/a" * 40000 + b" HTTP/1.1\r\n\r\n",
                                 b"POST / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n"])
def test_garbage_connections_get_an_answer_or_a_close(live: Live, raw: bytes) -> None:
    reply, closed = request(live.port, raw, half_close=True)
    assert closed
    assert status_of(post(live.port, live.listener.path, b"[]")) == 200


# -- end to end ----------------------------------------------------------------------------


def test_lambda_delivers_to_the_secret_path_end_to_end(tmp_path: Any, upstream: FakeUpstream) -> None:
    import re

    from e2e import ext_log, make_emulator

    with make_emulator(tmp_path, upstream, SENTRY_EXT_LOG_LEVEL="DEBUG") as emu:
        emu.start()
        for _ in range(2):
            assert emu.invoke({}).status == "success"
        subscribers = list(emu._sandbox.subscribers)  # the emulator's view of the subscription
        emu.shutdown()
        log = ext_log(emu)
    assert len(subscribers) == 1 and re.fullmatch(r"/telemetry/[0-9a-f]{32}", subscribers[0].path)
    assert subscribers[0].delivered > 0 and subscribers[0].dropped == 0
    assert "telemetry listener bound to 127.0.0.1" in log and "falling back" not in log


def test_the_real_process_stays_bounded_and_keeps_hearing_lambda_under_a_flood(tmp_path: Any,
                                                                                  upstream: FakeUpstream) -> None:
    """The extension process (no freezes, end mode): 200 idle connections, 40 wrong-path posts
    announcing 2 MiB and stalling, 40 spoofed runtimeDone batches on guessed paths. Threads and
    RSS stay bounded, and every invocation still ends by its own runtimeDone, not the fallback."""
    from e2e import EXTENSION_NAME, ext_log, make_emulator

    with make_emulator(tmp_path, upstream, freeze=False) as emu:
        emu.start()
        assert emu.invoke({}).status == "success"
        pid = emu.pids[EXTENSION_NAME]
        port = int(emu.env["SENTRY_EXT_TELEMETRY_PORT"])
        base = proc_status(pid)
        flood: List[socket.socket] = []
        try:
            for index in range(200):
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            for index in range(40):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"POST /telemetry HTTP/1.1\r\nContent-Length: %d\r\n\r\n{" % telemetry.MAX_BATCH_BYTES)
                flood.append(sock)
            for index in range(40):
                reply, _ = request(port, b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (
                    SPOOF_PATHS[index % len(SPOOF_PATHS)].encode(), len(runtime_done()), runtime_done()))
            under = proc_status(pid)
            for _ in range(3):
                result = emu.invoke({})
                assert result.status == "success" and result.post_runtime_ms is not None
                assert result.post_runtime_ms < 1500, result  # drained after runtimeDone, not at the deadline
            assert under["Threads"] <= base["Threads"] + telemetry.MAX_CONNECTIONS + 2, (base, under)
            assert proc_status(pid)["VmRSS"] - base["VmRSS"] < 16 * 1024, (base, proc_status(pid))
        finally:
            for sock in flood:
                sock.close()
        emu.shutdown()
        log = ext_log(emu)
    assert "falling back" not in log and "Traceback" not in log, log
    summary = log[log.index("summary:"):].split("\n", 1)[0].split()
    assert "flushes=4" in summary and "runtime_done_missed" not in " ".join(summary), summary


@pytest.mark.parametrize("expect", [b"", b"Expect: 100-continue\r\n"])
@pytest.mark.parametrize("value", [b"9" * 5000, "\u0661\u0662".encode("utf-8"), b"\xb2", b"+5", b"1_0", b"9" * 13])
def test_a_malformed_content_length_is_a_clean_400(live: Live, value: bytes, expect: bytes) -> None:
    errors = Errors()
    logger = logging.getLogger("sentry_ext")
    logger.addHandler(errors)
    try:
        reply, closed = request(live.port, b"POST %s HTTP/1.1\r\nContent-Length: %s\r\n%s\r\n" % (
            live.listener.path.encode(), value, expect), half_close=False)
    finally:
        logger.removeHandler(errors)
    # refused from the headers alone, before any "100 Continue" invites the body
    assert reply.startswith(b"HTTP/1.1 400") and closed, reply[:200]
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert live.batches == [] and live.stats.get("telemetry_refused") == 1
    assert status_of(post(live.port, live.listener.path, b"[]")) == 200  # still serving


def test_only_a_whole_request_already_in_the_socket_is_served_on_the_accept_thread() -> None:
    from sentry_ext.awslambda.telemetry_listener import _whole_request_waiting

    head = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n"
    cases = [(head + b"[{}]", True), (head + b"[{", False), (b"", False), (head[:20], False),
             (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", False),
             (b"POST /p HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n[", False),
             (b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n", True)]
    for data, whole in cases:
        ours, theirs = socket.socketpair()
        try:
            if data:
                theirs.sendall(data)
            assert _whole_request_waiting(ours) is whole, data
            if data:
                assert ours.recv(len(data)) == data  # only peeked: nothing consumed
        finally:
            ours.close()
            theirs.close()
