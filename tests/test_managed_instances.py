"""Lambda Managed Instances: overlapping invocations in one never-frozen sandbox, one awslambdaric
worker per concurrent request, the extension registered for SHUTDOWN only.

Per-request attribution of failure events and function logs comes with issues 11 and 12 (typed
telemetry records and per-request state keyed by requestId); this module checks delivery."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List

from e2e import EXTENSION_NAME, event_ids, ext_log, extension_events, make_emulator, telemetry_types
from helpers import attr
from tools.emulator import Emulator
from tools.fake_upstream import FakeUpstream

MANAGED = "lambda-managed-instances"
SLEEP_S = 1.0


def test_overlapping_invocations_deliver_every_event(tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream, init_type=MANAGED, max_concurrency=4) as emu:
        emu.start()
        assert not emu.frozen
        captured: List[str] = []
        requests = set()
        for _ in range(2):
            t0 = time.monotonic()
            results = emu.invoke_concurrently([{"sleep_s": SLEEP_S, "messages": 1}] * 4)
            elapsed = time.monotonic() - t0
            assert [r.status for r in results] == ["success"] * 4, ext_log(emu) + emu.output("runtime")
            assert elapsed < 3 * SLEEP_S, elapsed  # they ran at once: one after another would take 4 s
            for result in results:
                ids = event_ids(result)
                assert len(ids) == 2  # the handled error and the message
                captured.extend(ids)
                requests.add(json.loads(result.response or b"{}")["request_id"])
        assert requests == {r.request_id for r in emu.invocations} and len(requests) == 8
        # Sent continuously: everything arrives while the sandbox runs, before any SHUTDOWN.
        assert upstream.wait_for(lambda _: set(captured) <= set(upstream.event_ids()), 10), ext_log(emu)
        assert upstream.wait_for(lambda _: len(upstream.items("transaction")) == 8, 10)
        types = telemetry_types(emu)
        shutdown = emu.shutdown()
        log = ext_log(emu)
    assert [r["events"] for r in emu.registrations] == [["SHUTDOWN"]]
    assert "platform.runtimeDone" not in types and types.count("platform.report") == 8
    first_report = types.index("platform.report")
    assert types[:first_report].count("platform.start") == 4  # interleaved: four requests open at once
    assert shutdown.exit_codes[EXTENSION_NAME] == 0 and not shutdown.killed, log
    assert "Lambda Managed Instances: registered for SHUTDOWN only" in log
    assert "falling back" not in log and "flush=background" in log and "dropped=0" in log


def test_managed_instances_refuse_invoke_registrations_and_old_telemetry_schemas(tmp_path: Path) -> None:
    emu = Emulator(tmp_path, task_root=tmp_path, init_type=MANAGED)
    emu._ensure_server()
    try:
        with emu._cond:
            from tools.emulator.state import Sandbox

            emu._sandbox = Sandbox(1)
        reply = emu._api_register({"Lambda-Extension-Name": "x"}, b'{"events": ["INVOKE", "SHUTDOWN"]}')
        assert reply.status == 403 and json.loads(reply.body)["errorType"] == "Extension.InvalidEventType"
        reply = emu._api_register({"Lambda-Extension-Name": "x"}, b'{"events": ["SHUTDOWN"]}')
        assert reply.status == 200
        ext_id = reply.headers["Lambda-Extension-Identifier"]
        body: Dict[str, Any] = {"schemaVersion": "2022-12-13", "types": ["platform"],
                                "destination": {"protocol": "HTTP", "URI": "http://127.0.0.1:9/t"}}
        reply = emu._api_telemetry(ext_id, json.dumps(body).encode())
        assert reply.status == 400 and b"2025-01-29" in reply.body
    finally:
        emu.close()


def test_end_mode_means_background_on_managed_instances() -> None:
    from sentry_ext.config import load
    from sentry_ext.delivery.flush import FlushControl

    cfg = load({"SENTRY_DSN": "https://%s@o1.ingest.sentry.io/42" % ("a" * 32), "SENTRY_EXT_FLUSH": "end",
                "AWS_LAMBDA_INITIALIZATION_TYPE": MANAGED})
    assert FlushControl.from_config(cfg).mode == "background"
    from sentry_ext.awslambda import exec_model

    assert exec_model.register_events(cfg.init_type) == ("SHUTDOWN",)
    assert exec_model.telemetry_schema(cfg.init_type) == "2025-01-29"
    assert exec_model.register_events("on-demand") == ("INVOKE", "SHUTDOWN")


def test_the_exec_wrapper_reaches_every_worker(tmp_path: Path) -> None:
    """AWS_LAMBDA_EXEC_WRAPPER wraps the runtime's main process; the workers it forks inherit the
    local DSN, so the unmodified sample function's events all go through the extension."""
    import sys

    from tools.sandbox import SAMPLE_FUNCTION, free_port, make_opt

    wrapper = str(Path(__file__).resolve().parent.parent / "bin" / "sentry-lambda-wrapper")
    with FakeUpstream() as direct, FakeUpstream() as relayed:
        env = {"SENTRY_DSN": direct.dsn(), "SENTRY_EXT_UPSTREAM": relayed.base_url,
               "SENTRY_EXT_PORT": str(free_port()), "SENTRY_EXT_TELEMETRY_PORT": str(free_port()),
               "SENTRY_EXT_TELEMETRY_HOST": "127.0.0.1", "SENTRY_EXT_SPOOL_DIR": str(tmp_path / "spool"),
               "SENTRY_EXT_PYTHON": sys.executable}
        with Emulator(make_opt(tmp_path), task_root=SAMPLE_FUNCTION, env=env, exec_wrapper=wrapper,
                      init_type=MANAGED, max_concurrency=3, function_name="lmi-wrapper") as emu:
            emu.start()
            results = emu.invoke_concurrently([{}] * 3)
            assert [r.status for r in results] == ["success"] * 3, emu.output("runtime")
            ids = [eid for r in results for eid in event_ids(r)]
            assert relayed.wait_for(lambda _: set(ids) <= set(relayed.event_ids()), 10), relayed.event_ids()
            emu.shutdown()
        assert len(ids) == 3 and direct.requests == []


def test_overlapping_timeouts_each_get_their_own_failure_event(tmp_path: Path, upstream: FakeUpstream) -> None:
    """Two of three overlapping requests time out (no reset on Managed Instances): each gets one
    failure event carrying its own request id, from its own platform.report; the one that
    succeeded gets none."""
    with make_emulator(tmp_path, upstream, init_type=MANAGED, max_concurrency=3, timeout_s=1.0) as emu:
        emu.start()
        results = emu.invoke_concurrently([{"sleep_s": 2.5}, {}, {"sleep_s": 2.5}])
        assert [r.status for r in results] == ["timeout", "success", "timeout"]
        assert not any(r.reset for r in results)
        timed_out = {results[0].request_id, results[2].request_id}

        def made() -> Dict[str, List[str]]:
            by_request: Dict[str, List[str]] = {}
            for event in extension_events(upstream):
                by_request.setdefault(event["tags"]["aws_lambda.request_id"], []).append(
                    event["exception"]["values"][0]["type"])
            return by_request

        assert upstream.wait_for(lambda _: set(made()) >= timed_out, 10), (made(), ext_log(emu))
        emu.shutdown()
        log = ext_log(emu)
    assert made() == {rid: ["LambdaTimeout"] for rid in timed_out}, log


def test_overlapping_invocations_with_function_logs_each_answer_in_time(tmp_path: Path, upstream: FakeUpstream) -> None:
    """Function logs on: the workers share the runtime's log pipes; each answer waits only for the
    lines already written, so overlapping requests still succeed, and each request's logging
    records (JSON, with requestId) arrive as logs of that request."""
    with make_emulator(tmp_path, upstream, init_type=MANAGED, max_concurrency=4, SENTRY_EXT_LOGS="on",
                       runtime_env={"AWS_LAMBDA_LOG_FORMAT": "JSON"}) as emu:
        emu.start()
        words = ["w%d" % i for i in range(4)]
        t0 = time.monotonic()
        results = emu.invoke_concurrently([{"say": w, "capture": False, "sleep_s": SLEEP_S, "lines": 50}
                                           for w in words])
        elapsed = time.monotonic() - t0
        assert [r.status for r in results] == ["success"] * 4, ext_log(emu) + emu.output("runtime")
        assert elapsed < 3 * SLEEP_S, elapsed
        emu.shutdown()
        log = ext_log(emu)
    for word, result in zip(words, results):
        mine = [e for e in upstream.logs() if attr(e, "faas.invocation_id") == result.request_id]
        bodies = sorted(e["body"].splitlines()[0] for e in mine if e["level"] in ("warn", "error"))
        assert bodies == ["error " + word, "warning " + word], log
