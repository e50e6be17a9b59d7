"""Tests of tools/emulator.py with real processes: the real awslambdaric runtime and a
stdlib-only fixture extension (tests/fixtures/ext_minimal)."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tools.emulator import Emulator, EmulatorError, InvokeResult, ShutdownResult, main

FIXTURE_OPT = Path(__file__).resolve().parent / "fixtures" / "ext_minimal"
EXT = "minimal-ext"

HANDLER_SRC = textwrap.dedent(
    '''
    import os
    import time


    def handler(event, context):
        if event.get("sleep"):
            time.sleep(event["sleep"])
        if event.get("raise"):
            raise RuntimeError("boom")
        if event.get("exit"):
            os._exit(3)
        return {
            "ok": True,
            "request_id": context.aws_request_id,
            "arn": context.invoked_function_arn,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "env": {k: os.environ.get(k) for k in (
                "_HANDLER", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_FUNCTION_NAME", "AWS_ACCESS_KEY_ID",
                "WRAPPED", "AWS_LAMBDA_EXEC_WRAPPER", "FUNC_VAR", "RUNTIME_ONLY")},
        }
    '''
)


def proc_state(pid: int) -> str:
    with open("/proc/%d/stat" % pid, "rb") as fh:
        data = fh.read()
    return data[data.rfind(b")") + 2:][:1].decode()


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def task_root(tmp_path: Path) -> Path:
    root = tmp_path / "task"
    root.mkdir()
    (root / "app.py").write_text(HANDLER_SRC)
    return root


@pytest.fixture
def files(tmp_path: Path) -> Dict[str, Path]:
    return {"events": tmp_path / "events.jsonl", "telemetry": tmp_path / "telemetry.jsonl"}


def ext_env(files: Dict[str, Path], **extra: str) -> Dict[str, str]:
    env = {"MINIMAL_EXT_PYTHON": sys.executable, "MINIMAL_EXT_EVENTS_FILE": str(files["events"])}
    env.update(extra)
    return env


def make_emulator(task_root: Path, env: Dict[str, str], **kwargs: Any) -> Emulator:
    return Emulator(
        opt_dir=FIXTURE_OPT,
        runtime_cmd=[sys.executable, "-m", "awslambdaric", "app.handler"],
        task_root=task_root,
        env=env,
        **kwargs,
    )


def api_request(emu: Emulator, method: str, path: str, body: Any, headers: Dict[str, str]) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(emu.api_address, timeout=5)
    try:
        conn.request(method, path, body=json.dumps(body).encode(), headers=headers)
        resp = conn.getresponse()
        resp.data = resp.read()  # type: ignore[attr-defined]
        return resp
    finally:
        conn.close()


def test_lifecycle_freeze_telemetry_and_clean_shutdown(task_root: Path, files: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "must-not-leak")
    env = ext_env(files, MINIMAL_EXT_TELEMETRY_FILE=str(files["telemetry"]), MINIMAL_EXT_WAIT_RUNTIME_DONE="1", FUNC_VAR="f")
    with make_emulator(task_root, env, runtime_env={"RUNTIME_ONLY": "r"}, function_name="my-func") as emu:
        emu.start()
        assert emu.frozen
        assert len(emu.freeze_times) == 1
        whats = [(who, what) for _, who, what in emu.calls]
        assert (EXT, "register") in whats and (EXT, "telemetry/subscribe") in whats
        assert (EXT, "next") in whats and ("runtime", "next") in whats
        pids = emu.pids
        assert set(pids) == {EXT, "runtime"}

        results: List[InvokeResult] = []
        for i in range(3):
            for name, pid in pids.items():
                assert proc_state(pid) == "T", "%s should be stopped between invokes" % name
            res = emu.invoke({"n": i})
            results.append(res)
            assert res.status == "success", emu.output("runtime")
            assert not res.reset and not res.cold_start
            body = json.loads(res.response or b"{}")
            assert body["ok"] is True and body["request_id"] == res.request_id
            assert body["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:my-func"
            assert 0 < body["remaining_ms"] <= 10000
            assert res.runtime_ms is not None and res.runtime_ms >= 0
            # The fixture waits for runtimeDone (timeoutMs 25) before next: billed post-runtime time.
            assert res.post_runtime_ms is not None and 0 <= res.post_runtime_ms < 5000
            assert res.extensions_before_deadline == {EXT: True}
            assert EXT in res.extension_next_ms
            assert res.freeze_t is not None and res.freeze_t == emu.freeze_times[-1]
            assert emu.frozen
        assert len(emu.freeze_times) == 4
        assert emu.pids == pids  # same sandbox throughout

        env_seen = json.loads(results[0].response or b"{}")["env"]
        assert env_seen["_HANDLER"] == "app.handler"
        assert env_seen["LAMBDA_TASK_ROOT"] == str(task_root.resolve())
        assert env_seen["AWS_LAMBDA_FUNCTION_NAME"] == "my-func"
        assert env_seen["AWS_ACCESS_KEY_ID"] is None
        assert env_seen["FUNC_VAR"] == "f" and env_seen["RUNTIME_ONLY"] == "r"

        # The fixture received runtimeDone for every request before it called next.
        records = read_jsonl(files["telemetry"])
        done_ids = [r["record"]["requestId"] for r in records if r["type"] == "platform.runtimeDone"]
        assert done_ids == [r.request_id for r in results]
        types = [r["type"] for r in records]
        assert types[:3] == ["platform.initStart", "platform.initRuntimeDone", "platform.initReport"]
        assert "platform.start" in types and "platform.report" in types

        # A handler exception is an "error" invocation, not a reset.
        err = emu.invoke({"raise": True})
        assert err.status == "error" and not err.reset
        assert json.loads(err.response or b"{}")["errorType"] == "RuntimeError"
        assert emu.pids == pids

        # Telemetry API validation (sandbox frozen; the API server still answers).
        ext_id = [r["id"] for r in emu.registrations if r["name"] == EXT][-1]
        good: Dict[str, Any] = {
            "schemaVersion": "2022-12-13",
            "types": ["platform"],
            "destination": {"protocol": "HTTP", "URI": "http://sandbox.localdomain:1/x"},
        }
        hdr = {"Lambda-Extension-Identifier": ext_id}
        for bad in (
            dict(good, schemaVersion="2020-01-01"),
            dict(good, types=["platform", "bogus"]),
            dict(good, buffering={"maxItems": 10}),
            dict(good, buffering={"timeoutMs": 30001}),
            dict(good, destination={"protocol": "TCP", "URI": "http://sandbox.localdomain:1/x"}),
        ):
            resp = api_request(emu, "PUT", "/2022-07-01/telemetry", bad, hdr)
            assert resp.status == 400, bad
            assert "errorType" in json.loads(resp.data)  # type: ignore[attr-defined]
        resp = api_request(emu, "PUT", "/2022-07-01/telemetry", good, {"Lambda-Extension-Identifier": "nope"})
        assert resp.status == 403
        resp = api_request(emu, "GET", "/2020-01-01/extension/event/next", None, {"Lambda-Extension-Identifier": "nope"})
        assert resp.status == 403
        resp = api_request(emu, "POST", "/2020-01-01/extension/register", {"events": ["BOGUS"]}, {"Lambda-Extension-Name": EXT})
        assert resp.status == 400
        resp = api_request(emu, "POST", "/2020-01-01/extension/register", {"events": ["INVOKE"]}, {"Lambda-Extension-Name": "late"})
        assert resp.status == 403  # registration is only possible during Init
        resp = api_request(emu, "POST", "/2018-06-01/runtime/invocation/bogus/response", {}, {})
        assert resp.status == 400

        sd = emu.shutdown()
        assert isinstance(sd, ShutdownResult)
        assert sd.reason == "spindown" and sd.killed == []
        assert sd.exit_codes == {EXT: 0}
        assert sd.exit_ms[EXT] is not None and sd.exit_ms[EXT] < 2000
        assert not emu.frozen and emu.pids == {}

    events = read_jsonl(files["events"])
    start = [e for e in events if e.get("event") == "start"][0]
    assert start["env"]["_HANDLER"] is None and start["env"]["LAMBDA_TASK_ROOT"] is None
    assert start["env"]["AWS_EXECUTION_ENV"] is None and start["env"]["AWS_LAMBDA_FUNCTION_NAME"] == "my-func"
    assert [e["shutdownReason"] for e in events if e.get("eventType") == "SHUTDOWN"] == ["spindown"]
    assert [e["requestId"] for e in events if e.get("eventType") == "INVOKE"][:3] == [r.request_id for r in results]
    assert "registered as" in emu.output(EXT)


def test_runtime_timeout_resets_and_next_invoke_reinits(task_root: Path, files: Dict[str, Path], tmp_path: Path) -> None:
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text('#!/bin/sh\nexport WRAPPED=1\nexec "$@"\n')
    wrapper.chmod(0o755)
    with make_emulator(task_root, ext_env(files), timeout_s=1.0, exec_wrapper=str(wrapper)) as emu:
        emu.start()
        first_pids = emu.pids
        t0 = time.monotonic()
        res = emu.invoke({"sleep": 30})
        assert res.status == "timeout" and res.reset
        assert res.response is None and res.runtime_ms is None
        assert time.monotonic() - t0 < 5.0
        assert res.shutdown is not None and res.shutdown.reason == "timeout"
        assert res.shutdown.exit_codes == {EXT: 0} and res.shutdown.killed == []
        assert emu.pids == {}

        res2 = emu.invoke({})
        assert res2.status == "success" and res2.cold_start and not res2.reset
        assert res2.init_ms is not None and res2.init_ms > 0
        body = json.loads(res2.response or b"{}")
        assert body["env"]["WRAPPED"] == "1" and body["env"]["AWS_LAMBDA_EXEC_WRAPPER"] == str(wrapper)
        new_pids = emu.pids
        assert set(new_pids) == {EXT, "runtime"} and new_pids["runtime"] != first_pids["runtime"]
        assert emu.shutdown().exit_codes == {EXT: 0}

    events = read_jsonl(files["events"])
    assert [e["shutdownReason"] for e in events if e.get("eventType") == "SHUTDOWN"] == ["timeout", "spindown"]
    assert len([e for e in events if e.get("event") == "register"]) == 2


def test_runtime_crash_resets_with_failure(task_root: Path, files: Dict[str, Path]) -> None:
    with make_emulator(task_root, ext_env(files), timeout_s=5.0) as emu:
        emu.start()
        res = emu.invoke({"exit": True})
        assert res.status == "error" and res.reset and res.error_type == "Runtime.ExitError"
        assert res.shutdown is not None and res.shutdown.reason == "failure"
        assert res.shutdown.exit_codes == {EXT: 0}
        assert emu.invoke({}).status == "success"
    events = read_jsonl(files["events"])
    assert [e["shutdownReason"] for e in events if e.get("eventType") == "SHUTDOWN"] == ["failure"]


def test_extension_not_calling_next_times_out(task_root: Path, files: Dict[str, Path]) -> None:
    env = ext_env(files, MINIMAL_EXT_INVOKE_SLEEP_S="5")
    with make_emulator(task_root, env, timeout_s=0.5, shutdown_window_ms=500) as emu:
        emu.start()
        res = emu.invoke({})
        assert res.status == "timeout" and res.reset
        assert res.response is not None and json.loads(res.response)["ok"] is True  # the caller got it
        assert res.extensions_before_deadline == {EXT: False}
        assert res.extension_next_ms == {}
        assert res.post_runtime_ms is not None and 300 < res.post_runtime_ms < 2000
        assert res.shutdown is not None and res.shutdown.killed == [EXT]


def test_shutdown_ignored_is_sigkilled_at_deadline(task_root: Path, files: Dict[str, Path]) -> None:
    env = ext_env(files, MINIMAL_EXT_IGNORE_SHUTDOWN="1")
    with make_emulator(task_root, env, shutdown_window_ms=500, freeze=False) as emu:
        emu.start()
        assert not emu.frozen and emu.freeze_times == []
        res = emu.invoke({})
        assert res.status == "success" and res.freeze_t is None
        assert all(proc_state(pid) != "T" for pid in emu.pids.values())
        t0 = time.monotonic()
        sd = emu.shutdown()
        elapsed = time.monotonic() - t0
        assert sd.killed == [EXT]
        assert sd.exit_codes == {EXT: -9}
        assert sd.exit_ms[EXT] is not None and 400 <= sd.exit_ms[EXT] < 1500
        assert 0.4 <= elapsed < 2.0
        assert sd.runtime_exit_code is not None
    assert "SHUTDOWN (spindown)" in emu.output(EXT)


def test_telemetry_disabled_replies_not_supported(task_root: Path, files: Dict[str, Path]) -> None:
    env = ext_env(files, MINIMAL_EXT_TELEMETRY_FILE=str(files["telemetry"]))
    with make_emulator(task_root, env, telemetry=False) as emu:
        emu.start()
        subscribe = [e for e in read_jsonl(files["events"]) if e.get("event") == "subscribe"]
        assert subscribe and subscribe[0]["status"] == 202
        assert json.loads(subscribe[0]["body"]) == {
            "errorMessage": "Telemetry API is not supported",
            "errorType": "Telemetry.NotSupported",
        }
        assert emu.invoke({}).status == "success"
        assert emu.shutdown().exit_codes == {EXT: 0}
    assert not files["telemetry"].exists()


def test_init_failures_raise_with_output(task_root: Path, tmp_path: Path) -> None:
    opt = tmp_path / "opt"
    (opt / "extensions").mkdir(parents=True)
    bad = opt / "extensions" / "crashy"
    bad.write_text("#!/bin/sh\necho 'crashy: cannot start'\nexit 2\n")
    bad.chmod(0o755)
    with Emulator(opt_dir=opt, runtime_cmd=None, task_root=task_root) as emu:
        with pytest.raises(EmulatorError) as info:
            emu.start()
        assert "crashy" in str(info.value) and "cannot start" in str(info.value)

    # No extensions, handler module missing: awslambdaric posts init/error.
    empty_opt = tmp_path / "empty"
    empty_opt.mkdir()
    with Emulator(opt_dir=empty_opt, runtime_cmd=None, task_root=task_root, handler="missing.handler") as emu:
        with pytest.raises(EmulatorError) as info:
            emu.start()
        assert "Runtime.ImportModuleError" in str(info.value)


def test_cli_runs_invocations_and_prints_summary(task_root: Path, files: Dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    argv = ["--json", "--opt", str(FIXTURE_OPT), "--task-root", str(task_root), "--invocations", "2", "--freeze-s", "0.05"]
    for key, value in ext_env(files).items():
        argv += ["--env", "%s=%s" % (key, value)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is True
    assert [inv["status"] for inv in summary["invocations"]] == ["success", "success"]
    assert summary["shutdown"]["exit_codes"] == {EXT: 0}
    assert summary["init_ms"] > 0


def test_free_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    """A port handed to a sandbox must not be taken by a bind to port 0 or an outgoing connection
    before the extension binds it: free_port() draws below the kernel's ephemeral range."""
    from tools.netutil import _ephemeral_floor, free_port

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < port < _ephemeral_floor() for port in ports), ports
    for port in ports[:20]:  # each was free: it can be bound now
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
