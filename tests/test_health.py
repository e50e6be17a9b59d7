"""GET /health tells the truth: degraded (with reasons) during an upstream outage or with the queue
over half full, ok otherwise."""

from __future__ import annotations

from helpers import PROJECT, StartPipeline, auth, envelope, health, port_of, post, wait_until
from sentry_ext.ingest.health import assess
from tools.fake_upstream import FakeUpstream, Reply


def test_assess() -> None:
    assert assess(0, 0, 1000, 0, 8 << 20) == {"status": "ok", "reasons": [], "upstream_failures": 0}
    assert assess(0, 500, 1000, 4 << 20, 8 << 20)["status"] == "ok"  # exactly half is not over
    got = assess(0, 501, 1000, 0, 8 << 20)
    assert got["status"] == "degraded" and got["reasons"] == ["queue over half full: 501/1000 requests, 0/8388608 bytes"]
    assert assess(0, 1, 1000, (4 << 20) + 1, 8 << 20)["status"] == "degraded"  # by bytes
    got = assess(3, 0, 1000, 0, 8 << 20)
    assert got["status"] == "degraded" and got["upstream_failures"] == 3
    assert got["reasons"][0].startswith("upstream failing: 3 consecutive")
    assert len(assess(2, 900, 1000, 0, 8 << 20)["reasons"]) == 2


def test_degraded_during_an_upstream_outage_and_ok_after(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    upstream.script([Reply(status=503)] * 3)  # a short outage: three refusals, then 200s
    pipe = pipelines()
    port = port_of(pipe)
    first = health(port)
    assert first["status"] == "ok" and first["reasons"] == [] and first["upstream_failures"] == 0
    status, _, _ = post(port, "/api/%s/envelope/" % PROJECT, envelope("b" * 32), auth())
    assert status == 200
    seen = []
    assert wait_until(lambda: seen.append(health(port)) or seen[-1]["status"] == "degraded", timeout=10), seen
    degraded = seen[-1]
    assert degraded["upstream_failures"] >= 1
    assert [r for r in degraded["reasons"] if r.startswith("upstream failing")], degraded
    # The outage ends: the retry gets through and health says so.
    assert wait_until(lambda: health(port)["status"] == "ok", timeout=15), health(port)
    # the sender marks the upstream healthy just before it counts the request forwarded
    assert wait_until(lambda: pipe.stats.get("forwarded") == 1, 5), pipe.stats.snapshot()
    assert health(port)["upstream_failures"] == 0


def test_degraded_during_an_outage_even_with_one_attempt_per_request(upstream: FakeUpstream,
                                                                      pipelines: StartPipeline) -> None:
    # SENTRY_EXT_MAX_ATTEMPTS=1: every failure is also a give-up, and must still count.
    upstream.script([Reply(status=503)])
    pipe = pipelines(SENTRY_EXT_MAX_ATTEMPTS="1")
    port = port_of(pipe)
    assert post(port, "/api/%s/envelope/" % PROJECT, envelope("c" * 32), auth())[0] == 200
    assert wait_until(lambda: pipe.stats.dropped("send_error") == 1, timeout=10)
    got = health(port)
    assert got["status"] == "degraded" and got["upstream_failures"] == 1, got
