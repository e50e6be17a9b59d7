"""SnapStart: a sandbox restored from a snapshot taken after Init delivers its first invocation's
events, although the upstream connections the extension pooled during Init lead nowhere."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from e2e import event_ids, ext_log, make_emulator, telemetry_types
from helpers import KEY, PROJECT, FakeClock, auth, envelope, health, port_of, post, stop, wait_until
from sentry_ext.awslambda.exec_model import RestoreWatch
from tools.fake_upstream import FakeUpstream


@pytest.mark.parametrize("network", ["forgotten", "idle_closed"])
def test_a_restored_snapshot_delivers_its_first_invocations_events(tmp_path: Path, network: str) -> None:
    # forgotten: the network forgot the snapshot's connections (a request on one is never
    # answered); idle_closed: the upstream closed them while the snapshot lay in storage.
    up = FakeUpstream(idle_close_s=0.5 if network == "idle_closed" else None).start()
    try:
        emu = make_emulator(tmp_path, up, init_type="snap-start", runtime_env={"SAMPLE_INIT_MESSAGE": "1"})
        port = int(emu.env["SENTRY_EXT_PORT"])

        def delivered_before_snapshot() -> None:
            # The message captured at import went upstream over a pooled connection before the snapshot.
            assert wait_until(lambda: health(port)["counters"].get("forwarded", 0) >= 1, 10), ext_log(emu)

        emu.before_snapshot = delivered_before_snapshot
        with emu:
            emu.start()
            assert emu.frozen
            opened = up.connections_opened
            if network == "forgotten":
                up.forget_connections()
            emu.restore(after_s=1.0)  # the snapshot lies in storage for a while
            result = emu.invoke({})
            assert result.status == "success", ext_log(emu)
            ids = event_ids(result)
            # end mode drained before the extension called next, i.e. before invoke() returned
            delivered = set(up.event_ids())
            types = telemetry_types(emu)
            emu.shutdown()
            log = ext_log(emu)
        assert ids and set(ids) <= delivered, log
        assert up.black_holed == 0 and up.connections_opened > opened, log
        summary = log[log.index("summary:"):].split("\n", 1)[0].split()
        assert "restores=1" in summary and "retried=0" in summary, summary
        assert "restored from a snapshot (first event after the SnapStart snapshot)" in log
        restore = [t for t in types if t.startswith("platform.restore")]
        assert restore == ["platform.restoreStart", "platform.restoreRuntimeDone", "platform.restoreReport"]
        assert types.index("platform.restoreReport") < types.index("platform.start")
        assert len([eid for eid in up.event_ids() if eid not in ids]) == 1  # the Init message, once
    finally:
        up.stop()


def test_restore_watch_sees_the_first_event_of_a_snap_start_sandbox_and_clock_jumps() -> None:
    wall, mono = FakeClock(1000.0), FakeClock(50.0)
    watch = RestoreWatch("snap-start", jump_s=2.0, wall=wall, mono=mono)
    watch.before_wait()
    assert watch.after_wait() == "first event after the SnapStart snapshot"
    watch.before_wait()
    wall.now += 30
    mono.now += 30  # a freeze moves both clocks alike
    assert watch.after_wait() is None
    watch.before_wait()
    wall.now += 3600
    mono.now += 0.5  # a snapshot suspends the monotonic clock
    assert "3599.5 s" in (watch.after_wait() or "")
    on_demand = RestoreWatch("on-demand", wall=wall, mono=mono)
    on_demand.before_wait()
    assert on_demand.after_wait() is None


def test_after_restore_forgets_connections_and_monotonic_deadlines(pipelines: Any, upstream: FakeUpstream) -> None:
    import random

    pipe = pipelines()
    assert post(port_of(pipe), "/api/42/envelope/", envelope("b" * 32), auth())[0] == 200
    assert pipe.flush(5)
    old_pool = pipe.transport.pool
    pipe.forwarder.health.failure()  # a grace period taken on the pre-snapshot monotonic clock
    pipe.queue.pause_until(time.monotonic() + 3600)
    pipe.flush_control.decide()
    pipe.after_restore("test")
    assert pipe.transport.pool is not old_pool and old_pool.pool is None  # the old pool is closed
    assert pipe.forwarder.health.failures == 0 and not pipe.flush_control._invokes
    opened = upstream.connections_opened
    assert post(port_of(pipe), "/api/42/envelope/", envelope("c" * 32), auth())[0] == 200
    assert pipe.flush(5)  # not held back by the pause, sent over a new connection
    assert upstream.connections_opened == opened + 1 and "c" * 32 in upstream.event_ids()
    assert isinstance(pipe.forwarder.health._rng, random.SystemRandom)  # no PRNG state shared by restored copies


def test_a_snap_start_pipeline_keeps_no_upstream_connection_until_the_restore(pipelines: Any) -> None:
    def pooled(pipe: Any) -> int:
        return sum(conn is not None for conn in list(pipe.transport.pool.pool.queue))

    pipe = pipelines(AWS_LAMBDA_INITIALIZATION_TYPE="snap-start")
    for index in range(3):  # sent during Init: the snapshot may come at any moment after each
        assert post(port_of(pipe), "/api/42/envelope/", envelope("%032x" % index), auth())[0] == 200
        assert pipe.flush(5)
        assert wait_until(lambda: pooled(pipe) == 0, 5)
    pipe.after_restore("test")
    assert post(port_of(pipe), "/api/42/envelope/", envelope("f" * 32), auth())[0] == 200
    assert pipe.flush(5) and wait_until(lambda: pooled(pipe) == 1, 5)  # after the restore, pooled as usual


def test_a_restore_while_the_pipeline_is_still_starting_is_handled_once_it_has(upstream: FakeUpstream,
                                                                                monkeypatch: Any) -> None:
    from sentry_ext import main
    from sentry_ext.config import load

    monkeypatch.setattr(main, "RESTORE_READY_WAIT_S", 0.01)
    ext = main.Extension(load({"SENTRY_DSN": upstream.dsn(KEY, PROJECT), "SENTRY_EXT_SPOOL_DIR": "/nonexistent",
                               "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"}), "test-ext")
    ext._after_restore("first event after the SnapStart snapshot")  # the pipeline has not started yet
    ext._first_poll_sent.set()
    ext._start_pipeline(main.bind_listener("127.0.0.1", 0), None)
    try:
        assert ext.pipeline is not None and not ext.pipeline.snapshot_pending
        assert ext.pipeline.stats.get("restores") == 1
    finally:
        if ext.pipeline is not None:
            stop(ext.pipeline)


def test_the_emulator_restores_only_a_snap_start_snapshot(tmp_path: Path) -> None:
    from tools.emulator import Emulator, EmulatorError

    with Emulator(tmp_path, task_root=tmp_path) as emu:
        emu._ensure_server()
        with pytest.raises(EmulatorError):
            emu.restore()
        assert emu._route_restore("GET", "/2018-06-01/runtime/restore/next", {}, b"").status == 403
        assert emu._route_restore("POST", "/2018-06-01/runtime/restore/next", {}, b"").status == 405
