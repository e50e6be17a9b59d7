"""End to end: emulator + bin/sentry-lambda-extension + real sentry-sdk under real awslambdaric."""

from __future__ import annotations

from pathlib import Path

from e2e import EXTENSION_NAME, event_ids, ext_log, make_emulator
from helpers import KEY
from tools.fake_upstream import FakeUpstream


def test_ten_frozen_invocations_deliver_every_event(tmp_path: Path, upstream: FakeUpstream) -> None:
    captured = []
    with make_emulator(tmp_path, upstream) as emu:
        emu.start()
        for _ in range(10):
            result = emu.invoke({})
            assert result.status == "success", ext_log(emu)
            captured.extend(event_ids(result))
            emu.wait_frozen_for(0.1)
        shutdown = emu.shutdown()
        log = ext_log(emu)
    assert len(captured) == 10
    records = {eid: rec for rec, _, payload in upstream.items("event")
               for eid in [__import__("json").loads(payload)["event_id"]]}
    assert set(captured) <= set(records), log
    for eid in captured:
        rec = records[eid]
        assert rec.path == "/api/42/envelope/"
        assert rec.auth.get("sentry_key") == KEY
    assert len(upstream.items("transaction")) == 10
    # the extension exits by itself, well before the 2 s deadline
    assert shutdown.exit_codes[EXTENSION_NAME] == 0 and not shutdown.killed, log
    assert shutdown.exit_ms[EXTENSION_NAME] is not None and shutdown.exit_ms[EXTENSION_NAME] < 2000
    assert "summary:" in log and "dropped=0" in log


def test_missing_dsn_leaves_an_inert_extension_and_a_working_function(tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream, SENTRY_DSN="") as emu:
        emu.start()
        for _ in range(2):
            result = emu.invoke({})
            assert result.status == "success"
            assert result.post_runtime_ms is not None and result.post_runtime_ms < 200  # inert costs nothing
        shutdown = emu.shutdown()
        log = ext_log(emu)
    assert shutdown.exit_codes[EXTENSION_NAME] == 0 and not shutdown.killed
    assert log.count("inert: SENTRY_DSN is not set") == 1
    assert upstream.requests == []


def test_port_taken_leaves_an_inert_extension(tmp_path: Path, upstream: FakeUpstream) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        port = str(blocker.getsockname()[1])
        with make_emulator(tmp_path, upstream, SENTRY_EXT_PORT=port) as emu:
            emu.start()
            result = emu.invoke({})
            assert result.status == "success"
            assert result.post_runtime_ms is not None and result.post_runtime_ms < 200  # inert costs nothing
            shutdown = emu.shutdown()
            log = ext_log(emu)
    assert shutdown.exit_codes[EXTENSION_NAME] == 0
    assert "inert: cannot listen on 127.0.0.1:%s" % port in log


def test_unknown_log_level_logs_one_warning_and_relays(tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream, SENTRY_EXT_LOG_LEVEL="chatty") as emu:
        emu.start()
        assert emu.invoke({}).status == "success"
        emu.shutdown()
        log = ext_log(emu)
    assert log.count("WARNING SENTRY_EXT_LOG_LEVEL must be one of DEBUG/INFO/WARNING/ERROR, got 'chatty'") == 1, log
    assert "relaying" in log
