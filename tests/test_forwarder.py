"""The sender threads against the fake upstream: retries, drops, flush, stale connections."""

from __future__ import annotations

import time

import pytest

from helpers import KEY, PROJECT, StartPipeline, auth, envelope, port_of, post, wait_until
from sentry_ext.config import load
from sentry_ext.delivery.request import Request
from sentry_ext.delivery.transport import pool_options, proxy_bypassed
from tools.fake_upstream import FakeUpstream, Reply


def send(pipe, n: int) -> None:
    for i in range(n):
        status, _, _ = post(port_of(pipe), "/api/42/envelope/", envelope("%032x" % i), auth())
        assert status == 200


def test_retries_5xx_and_dropped_connections_until_delivered(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    upstream.script([Reply(500), Reply(action="drop"), Reply(503), Reply(action="reset"),
                     Reply(action="drop_mid_response")])
    pipe = pipelines()
    send(pipe, 3)
    assert pipe.flush(20)
    delivered = {r.envelope.event_id for r in upstream.requests if r.status == 200}
    assert delivered == {"%032x" % i for i in range(3)}
    assert pipe.stats.get("retried") >= 4 and pipe.stats.snapshot()["dropped"] == {}


def test_4xx_is_dropped_as_send_error_and_429_is_not_retried(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    # A category the test's events are not in: a bare 429 would (rightly) make ingest refuse the third one.
    upstream.script([Reply(400), Reply(429, headers={"X-Sentry-Rate-Limits": "30:transaction:key"})])
    pipe = pipelines(SENTRY_EXT_SENDERS="1")
    send(pipe, 3)
    assert pipe.flush(10)
    # nothing re-sent (a client report for the send_error may ride the flush)
    assert len([r for r in upstream.requests if "client_report" not in r.item_types]) == 3
    # a sender counts a drop just after it releases the request (which is what ends the flush),
    # and a client report queued by that drop can still be on its way: wait for each count
    assert wait_until(lambda: pipe.stats.dropped("send_error") == 1, 5), pipe.stats.snapshot()
    assert wait_until(lambda: pipe.stats.dropped("ratelimited_upstream") == 1, 5), pipe.stats.snapshot()
    assert wait_until(lambda: pipe.stats.get("forwarded") - pipe.stats.get("client_reports") == 1, 5), \
        pipe.stats.snapshot()


def test_gives_up_after_max_attempts_and_counts_network_error(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    upstream.default = Reply(action="reset")
    pipe = pipelines(SENTRY_EXT_MAX_ATTEMPTS="3", SENTRY_EXT_SENDERS="1")
    send(pipe, 1)
    assert pipe.flush(10)
    # the drop is counted just after the request is released, which is what ends the flush
    assert wait_until(lambda: pipe.stats.dropped("network_error") == 1, 5), pipe.stats.snapshot()


def test_flush_is_bounded_while_upstream_is_down(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    upstream.default = Reply(503)
    pipe = pipelines(SENTRY_EXT_MAX_ATTEMPTS="100")
    send(pipe, 2)
    t0 = time.monotonic()
    assert not pipe.flush(0.5)
    assert time.monotonic() - t0 < 1.5
    assert len(pipe.queue) == 2  # still queued, to be sent after the thaw
    upstream.default = Reply(200)
    pipe.forwarder.health.success()
    pipe.queue.resume()
    assert pipe.flush(10)
    assert pipe.stats.get("forwarded") == 2


def test_stale_keepalive_connection_is_replaced_at_once(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    upstream.idle_close_s = 0.2
    pipe = pipelines(SENTRY_EXT_SENDERS="1")
    send(pipe, 1)
    assert pipe.flush(5)
    assert upstream.wait_for(lambda _: upstream.idle_closes >= 1, 5)
    t0 = time.monotonic()
    send(pipe, 1)
    assert pipe.flush(5)
    assert time.monotonic() - t0 < 1.0  # no back-off for a connection that died while idle
    assert pipe.stats.get("forwarded") == 2


def test_concurrent_senders_overlap_round_trips(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    upstream.delay_s = 0.3
    pipe = pipelines(SENTRY_EXT_SENDERS="4")
    send(pipe, 4)
    t0 = time.monotonic()
    assert pipe.flush(10)
    assert time.monotonic() - t0 < 0.9  # four in parallel, not 4 x 0.3 s


def test_more_senders_than_max_inflight_run_max_inflight(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    # SENTRY_EXT_MAX_INFLIGHT caps the threads (the pool holds that many connections), whatever SENDERS says.
    pipe = pipelines(SENTRY_EXT_SENDERS="8", SENTRY_EXT_MAX_INFLIGHT="2")
    assert pipe.forwarder.senders == 2
    assert (pipe.forwarder.controller.minimum, pipe.forwarder.controller.cap) == (2, 2)
    send(pipe, 6)
    assert pipe.flush(10)
    assert pipe.forwarder.senders == 2 and pipe.stats.get("senders_peak") == 2


def test_pool_options_are_pure_and_use_the_ca_bundle() -> None:
    cfg = load({"SENTRY_DSN": "https://k@example.com/1", "SSL_CERT_FILE": "/custom/ca.pem",
                "SENTRY_EXT_CONNECT_TIMEOUT_MS": "1500", "SENTRY_EXT_SENDERS": "3",
                "SENTRY_EXT_MAX_INFLIGHT": "48"})
    opts = pool_options(cfg)
    assert opts["ca_certs"] == "/custom/ca.pem" and opts["cert_reqs"] == "CERT_REQUIRED"
    # one pool sized to the most requests ever in flight; non-blocking (connections are opened on demand)
    assert opts["maxsize"] == 48 and opts["block"] is False and opts["retries"] is False
    assert opts["timeout"].connect_timeout == 1.5
    import certifi
    assert pool_options(load({"SENTRY_DSN": "https://k@example.com/1"}))["ca_certs"] == certifi.where()


@pytest.mark.parametrize("host,port,no_proxy,expected", [
    ("o1.ingest.sentry.io", 443, "", False),
    ("o1.ingest.sentry.io", 443, "*", True),
    ("o1.ingest.sentry.io", 443, "sentry.io", True),
    ("o1.ingest.sentry.io", 443, ".sentry.io", True),
    ("o1.ingest.sentry.io", 443, "localhost,127.0.0.1", False),
    ("o1.ingest.sentry.io", 443, "o1.ingest.sentry.io:8443", False),
    ("o1.ingest.sentry.io", 443, "o1.ingest.sentry.io:443", True),
    ("notsentry.io", 443, "sentry.io", False),
])
def test_no_proxy_matching(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert proxy_bypassed(host, port, no_proxy) is expected


def test_http_proxy_gets_absolute_urls_and_no_proxy_bypasses_it(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    pipe = pipelines("http://%s@sentry.invalid/%s" % (KEY, PROJECT), HTTP_PROXY=upstream.base_url)
    send(pipe, 1)
    assert pipe.flush(5)
    assert upstream.requests[0].target == "http://sentry.invalid/api/42/envelope/"
    upstream.clear()
    pipe = pipelines(HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1")
    send(pipe, 1)
    assert pipe.flush(5)
    assert upstream.requests[0].target == "/api/42/envelope/"


def test_default_retry_budget_rides_out_a_multi_second_outage() -> None:
    import random

    from sentry_ext.delivery.forwarder import UpstreamHealth

    clock = [1000.0]
    health = UpstreamHealth(rng=random.Random(0), clock=lambda: clock[0])
    attempts = load({"SENTRY_DSN": "https://k@example.com/1"}).max_attempts
    waited = 0.0
    for _ in range(attempts - 1):  # a failed attempt, then the grace period before the next one
        grace = health.failure()
        waited += grace
        clock[0] += grace
    assert waited >= 12.0  # the shortest (all jitter at 50 %) budget is 0.5 x 50 ms x (2^9 - 1)
    # failures from parallel senders inside one grace period do not escalate it
    first = health.failure()
    clock[0] += first / 2
    assert health.failure() == pytest.approx(first / 2)


# -- round-trip samples across /event/next (issue 20, finding 2) --------------------------------


def test_a_round_trip_in_flight_across_event_next_is_not_sampled(upstream: FakeUpstream,
                                                                  pipelines: StartPipeline) -> None:
    # The upstream's 1 s stall stands in for a freeze: /event/next is called while the request is
    # in flight, and the monotonic clock counts the whole freeze into its round trip.
    pipe = pipelines(SENTRY_EXT_SENDERS="1", SENTRY_EXT_MAX_INFLIGHT="1")
    send(pipe, 3)
    assert pipe.flush(5)
    rtt = pipe.forwarder.rtt
    assert wait_until(lambda: rtt.samples == 3, 5)
    srtt, expected = rtt.srtt, rtt.expected()
    upstream.script([Reply(delay_s=1.0)])
    send(pipe, 1)
    assert upstream.wait_for(lambda reqs: len(reqs) == 4, 5)  # in flight: upstream has it, no reply yet
    pipe.waiting_in_next(True)
    assert pipe.flush(5)
    assert wait_until(lambda: pipe.stats.get("rtt_discarded") == 1, 5), pipe.stats.snapshot()
    assert (rtt.samples, rtt.srtt, rtt.expected()) == (3, srtt, expected)
    # started while the lifecycle waits in /event/next (background mode): a freeze may come any time
    send(pipe, 1)
    assert pipe.flush(5)
    assert wait_until(lambda: pipe.stats.get("rtt_discarded") == 2, 5), pipe.stats.snapshot()
    pipe.waiting_in_next(False)
    assert rtt.samples == 3
    # a round trip that crossed no /event/next is a sample (the stall is then the upstream's own)
    upstream.script([Reply(delay_s=0.3)])
    send(pipe, 1)
    assert pipe.flush(5)
    assert wait_until(lambda: rtt.samples == 4, 5)
    assert (rtt.srtt or 0) > (srtt or 0)


def test_a_round_trip_longer_than_its_read_timeout_is_not_sampled(upstream: FakeUpstream,
                                                                  pipelines: StartPipeline) -> None:
    # A socket read cannot wait longer than the read timeout, so a longer round trip is a clock
    # that ran on without us (a freeze).
    pipe = pipelines(SENTRY_EXT_SENDERS="1", SENTRY_EXT_MAX_INFLIGHT="1", SENTRY_EXT_READ_TIMEOUT_MS="1000")
    limit = pipe.transport.read_timeout_for(None)
    assert limit == 1.0 and pipe.transport.read_timeout_for(0.01) == 0.05
    assert pipe.transport.read_timeout_for(0.5) == 0.5 and pipe.transport.read_timeout_for(9.0) == 1.0
    ticks = iter([100.0, 101.5])  # sent, answered: 1.5 s by a monotonic clock that ran on through a freeze
    pipe.forwarder.clock = lambda: next(ticks)
    req = Request("/api/%s/envelope/" % PROJECT, {"Content-Type": "application/x-sentry-envelope"},
                  envelope("b" * 32), KEY)
    result = pipe.forwarder._send(req, None)
    assert result.status == 200 and upstream.requests[-1].envelope.event_id == "b" * 32
    assert pipe.forwarder.rtt.samples == 0 and pipe.stats.get("rtt_discarded") == 1


# -- resends that may duplicate (issue 20, finding 3) --------------------------------------------


def copies(upstream: FakeUpstream, event_id: str) -> int:
    return sum(1 for r in upstream.requests if r.envelope is not None and r.envelope.event_id == event_id)


@pytest.mark.parametrize("fault", ["drop_mid_response", "drop"])
def test_a_resend_after_upstream_may_have_read_the_request_is_counted_at_risk(
        fault: str, upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    # drop_mid_response: the reply is cut off mid-body; drop: a fresh connection is closed after
    # the request went out. Either way upstream read it: the resend is a second copy.
    upstream.script([Reply(action=fault)])
    pipe = pipelines(SENTRY_EXT_SENDERS="1", SENTRY_EXT_MAX_INFLIGHT="1")
    send(pipe, 1)
    assert pipe.flush(5)
    assert copies(upstream, "%032x" % 0) == 2 and upstream.requests[0].action == fault
    snap = pipe.stats.snapshot()
    assert (snap["forwarded"], snap["retried"], snap.get("duplicates_at_risk")) == (1, 1, 1), snap


def test_an_idle_pooled_connection_closed_under_the_request_is_resent_uncounted(
        upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    pipe = pipelines(SENTRY_EXT_SENDERS="1", SENTRY_EXT_MAX_INFLIGHT="1")
    send(pipe, 1)
    assert pipe.flush(5) and upstream.connections_opened == 1
    # the pooled connection is closed as the next request arrives, unread (an idle close that
    # crossed it on the wire): upstream never had it, so the resend duplicates nothing
    upstream.script([Reply(action="close_unread")])
    status, _, _ = post(port_of(pipe), "/api/42/envelope/", envelope("%032x" % 1), auth())
    assert status == 200
    assert pipe.flush(5)
    assert upstream.idle_closes == 1 and upstream.connections_opened == 2
    assert copies(upstream, "%032x" % 0) == copies(upstream, "%032x" % 1) == 1
    snap = pipe.stats.snapshot()
    assert (snap["forwarded"], snap["retried"], snap.get("duplicates_at_risk", 0)) == (2, 1, 0), snap


def test_a_dropped_pooled_connection_reconnected_counts_as_fresh(upstream: FakeUpstream,
                                                                 pipelines: StartPipeline) -> None:
    # urllib3 reconnects the object of a pooled connection it found closed: a new socket, which has
    # served nothing, so upstream closing it after the request went out may have read the request.
    upstream.idle_close_s = 0.2
    pipe = pipelines(SENTRY_EXT_SENDERS="1", SENTRY_EXT_MAX_INFLIGHT="1")
    send(pipe, 1)
    assert pipe.flush(5)
    assert upstream.wait_for(lambda _: upstream.idle_closes >= 1, 5)  # waiting past idle_close_s is the scenario
    upstream.idle_close_s = None
    upstream.script([Reply(action="drop")])
    status, _, _ = post(port_of(pipe), "/api/42/envelope/", envelope("%032x" % 1), auth())
    assert status == 200 and pipe.flush(5)
    assert copies(upstream, "%032x" % 1) == 2
    snap = pipe.stats.snapshot()
    assert (snap["forwarded"], snap["retried"], snap.get("duplicates_at_risk")) == (2, 1, 1), snap
