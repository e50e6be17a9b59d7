"""Upstream faults: refused connections, DNS failure, TLS failure, resets mid-response, slow
replies and 5xx storms. Nothing crashes, invocations end before their deadline (post-runtime
bounded by the flush timeout), and every loss is counted (and reported once upstream is back)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from e2e import EXTENSION_NAME, event_ids, ext_log, make_emulator
from helpers import KEY, PROJECT, StartPipeline, auth, envelope, port_of, post, wait_until
from sentry_ext.pipeline import Pipeline
from tools.fake_upstream import FakeUpstream, Reply
from tools.sandbox import free_port

FLUSH_TIMEOUT_MS = 600
SLACK_MS = 400  # scheduling, the telemetry batch and process wake-up on a loaded 2-core CI machine


def send(pipe: Pipeline, ids: List[str]) -> None:
    for event_id in ids:
        status, _, _ = post(port_of(pipe), "/api/%s/envelope/" % PROJECT, envelope(event_id), auth())
        assert status == 200


def delivered(upstream: FakeUpstream) -> set:
    return {r.envelope.event_id for r in upstream.requests
            if r.envelope is not None and r.status == 200 and r.action == "respond"}


def reports(upstream: FakeUpstream) -> List[dict]:
    """discarded_events of every client report the upstream received."""
    out: List[dict] = []
    for _, _, payload in upstream.items("client_report"):
        out.extend(json.loads(payload).get("discarded_events", []))
    return out


def assert_bounded_flush(pipe: Pipeline, budget_s: float) -> bool:
    t0 = time.monotonic()
    done = pipe.flush(budget_s)
    assert time.monotonic() - t0 < budget_s + 0.3, "flush overran its budget"
    return done


# -- unreachable upstreams -----------------------------------------------------------------


def test_refused_connection_is_dropped_as_network_error_within_the_budget(pipelines: StartPipeline) -> None:
    port = free_port()  # nothing listens there any more
    pipe = pipelines("http://%s@127.0.0.1:%d/%s" % (KEY, port, PROJECT), SENTRY_EXT_MAX_ATTEMPTS="3")
    send(pipe, ["a" * 32])
    assert_bounded_flush(pipe, 1.0)
    assert wait_until(lambda: pipe.stats.dropped("network_error") == 1, 5), pipe.stats.snapshot()
    assert pipe.queue.depth()["in_flight"] == 0
    assert all(t.is_alive() for t in pipe.forwarder._threads)


def test_dns_failure_is_dropped_as_network_error_without_hanging(monkeypatch: pytest.MonkeyPatch, pipelines: StartPipeline) -> None:
    # Resolution is simulated (EAI_NONAME, as a resolver answers for .invalid): a real lookup
    # would leave loopback, and a resolver's timeout is not bounded by the connect timeout.
    real = socket.getaddrinfo
    lookups: List[str] = []

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(host, str) and host.endswith(".invalid"):
            lookups.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    pipe = pipelines("https://%s@nonexistent.invalid/%s" % (KEY, PROJECT), SENTRY_EXT_MAX_ATTEMPTS="3",
                         SENTRY_EXT_CONNECT_TIMEOUT_MS="200")
    send(pipe, ["b" * 32])
    assert_bounded_flush(pipe, 1.0)
    assert wait_until(lambda: pipe.stats.dropped("network_error") == 1, 5), pipe.stats.snapshot()
    assert len(lookups) >= 3  # every attempt tried to resolve


# -- TLS -----------------------------------------------------------------------------------


def _make_certs(tmp: Path) -> Tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("neither the cryptography package nor the openssl CLI is available to make a test CA")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (tmp / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
                                 "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                                 "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n")
    commands = [
        ["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=sentry-ext test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["openssl", "req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf"],
    ]
    for cmd in commands:
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True, timeout=30)
    return tmp / "ca.pem", tmp / "srv.pem", tmp / "srv.key"


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[Tuple[FakeUpstream, Path]]:
    """The fake upstream with its listening socket wrapped in TLS (test-local, no change to the fake)."""
    ca, cert, key = _make_certs(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    up = FakeUpstream().start()
    server = up._server
    assert server is not None
    server.socket = context.wrap_socket(server.socket, server_side=True)
    try:
        yield up, ca
    finally:
        up.stop()


def test_tls_upstream_is_reached_when_its_ca_is_configured(tls_upstream: Tuple[FakeUpstream, Path], pipelines: StartPipeline) -> None:
    up, ca = tls_upstream
    pipe = pipelines("https://%s@127.0.0.1:%d/%s" % (KEY, up.port, PROJECT), SSL_CERT_FILE=str(ca))
    send(pipe, ["c" * 32])
    assert assert_bounded_flush(pipe, 3.0)
    assert "c" * 32 in delivered(up)
    assert not pipe.stats.snapshot()["dropped"]


def test_untrusted_tls_upstream_is_dropped_after_retries_and_counted(tls_upstream: Tuple[FakeUpstream, Path], pipelines: StartPipeline) -> None:
    up, _ = tls_upstream
    pipe = pipelines("https://%s@127.0.0.1:%d/%s" % (KEY, up.port, PROJECT), SENTRY_EXT_MAX_ATTEMPTS="3")
    send(pipe, ["d" * 32])
    assert_bounded_flush(pipe, 1.0)
    assert wait_until(lambda: pipe.stats.dropped("network_error") == 1, 5), pipe.stats.snapshot()
    assert pipe.stats.get("retried") >= 2
    assert not up.requests  # nothing was ever sent over the unverified connection


# -- faulty replies, in-process ------------------------------------------------------------


def test_resets_and_cut_responses_are_retried_then_delivered(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    upstream.script([Reply(action="drop_mid_response"), Reply(action="reset"), Reply(action="drop"), Reply(502)])
    pipe = pipelines(SENTRY_EXT_SENDERS="1")
    send(pipe, ["e" * 32])
    assert assert_bounded_flush(pipe, 4.0), pipe.queue.depth()
    assert "e" * 32 in delivered(upstream)
    assert pipe.stats.get("retried") >= 4 and not pipe.stats.snapshot()["dropped"]


def test_a_5xx_storm_drops_are_counted_and_reported_once_upstream_is_back(upstream: FakeUpstream, pipelines: StartPipeline) -> None:
    upstream.default = Reply(503)
    pipe = pipelines(SENTRY_EXT_MAX_ATTEMPTS="2", SENTRY_EXT_SENDERS="2")
    ids = ["%032x" % i for i in range(4)]
    send(pipe, ids)
    assert wait_until(lambda: pipe.stats.dropped("send_error") == 4, 5), pipe.stats.snapshot()
    # a sender records a drop for the client report just after it counts it: the flush below
    # only sends what is recorded by then
    assert wait_until(lambda: pipe.discards.snapshot(KEY).get(("send_error", "error")) == 4, 5), \
        pipe.discards.snapshot(KEY)
    assert all(t.is_alive() for t in pipe.forwarder._threads)
    upstream.default = Reply()
    pipe.forwarder.health.success()  # skip the remaining grace period
    pipe.queue.resume()
    send(pipe, ["f" * 32])
    assert assert_bounded_flush(pipe, 3.0)
    assert "f" * 32 in delivered(upstream)
    # the drops reach Sentry as a client report (sentry_ext/protocol/discards.py)
    assert upstream.wait_for(lambda _: any(e.get("reason") == "send_error" for e in reports(upstream)), 5), \
        [r.item_types for r in upstream.requests]
    lost = sum(e["quantity"] for e in reports(upstream) if e["reason"] == "send_error" and e["category"] == "error")
    assert lost == 4


# -- faulty replies under the emulator: invocations end on time --------------------------


def test_invocations_end_before_their_deadline_whatever_the_upstream_does(tmp_path: Path, upstream: FakeUpstream) -> None:
    faults = [("slow 10 s replies", Reply(delay_s=10.0)), ("resets", Reply(action="reset")),
              ("cut responses", Reply(action="drop_mid_response")), ("5xx storm", Reply(503))]
    captured: List[str] = []
    with make_emulator(tmp_path, upstream, timeout_s=5.0, SENTRY_EXT_FLUSH_TIMEOUT_MS=str(FLUSH_TIMEOUT_MS),
                       SENTRY_EXT_READ_TIMEOUT_MS="2000") as emu:
        emu.start()
        for name, reply in faults:
            upstream.default = reply
            result = emu.invoke({})
            assert result.status == "success", (name, ext_log(emu))
            assert result.extensions_before_deadline[EXTENSION_NAME], (name, ext_log(emu))
            assert result.post_runtime_ms is not None and result.post_runtime_ms < FLUSH_TIMEOUT_MS + SLACK_MS, \
                (name, result.post_runtime_ms)
            captured += event_ids(result)
        upstream.default = Reply()
        result = emu.invoke({})
        captured += event_ids(result)
        assert result.extensions_before_deadline[EXTENSION_NAME]
        shutdown = emu.shutdown()
        log = ext_log(emu)
    assert shutdown.exit_codes[EXTENSION_NAME] == 0 and not shutdown.killed, log
    assert "Traceback" not in log, log
    summary = log[log.rindex("summary:"):].splitlines()[0]
    missing = set(captured) - delivered(upstream)
    if missing:  # anything not delivered is accounted for: dropped and counted, or spooled for the next sandbox
        spooled = summary.split(" spooled=")[1].split()[0] if " spooled=" in summary else "0"
        counted = sum(int(n) for n in _dropped(summary).values()) + int(spooled)
        assert counted >= len(missing), (missing, summary)


def _dropped(summary: str) -> dict:
    value = summary.split("dropped=")[1].split()[0]
    return {} if value == "0" else dict(pair.split(":") for pair in value.split(","))
