"""The extension's record for the exec wrapper (sentry_ext/awslambda/handshake.py), end to end: whatever makes
the extension inert, the function's Init succeeds and its real sentry-sdk, wrapped, sends straight
to Sentry; an active extension gets the SDK pointed at it, with the organisation id kept."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from helpers import KEY
from sentry_ext.awslambda import handshake
from tools.emulator import Emulator
from tools.fake_upstream import FakeUpstream
from tools.netutil import free_port
from tools.sandbox import function_env

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "bin" / "sentry-lambda-wrapper"
LAUNCHER = ROOT / "bin" / "sentry-lambda-extension"
STANDIN = ROOT / "bin" / "sentry-lambda-inert"
SAMPLE_FUNCTION = ROOT / "tools" / "sample_function"
NAME = "sentry-lambda-extension"
ORG = "4508123"


def layer_opt(base: Path, with_package: bool = True) -> Path:
    """An /opt laid out like the layer: extensions/<launcher>, sentry-lambda-extension/{bin,sentry_ext}."""
    opt = base / "opt"
    (opt / "extensions").mkdir(parents=True)
    shutil.copy2(LAUNCHER, opt / "extensions" / NAME)
    lib = opt / "sentry-lambda-extension"
    (lib / "bin").mkdir(parents=True)
    shutil.copy2(STANDIN, lib / "bin" / STANDIN.name)
    if with_package:  # the layer vendors urllib3 and certifi: -IBS sees no site-packages
        import certifi
        import urllib3

        os.symlink(ROOT / "sentry_ext", lib / "sentry_ext")
        for module in (urllib3, certifi):
            os.symlink(Path(module.__file__).parent, lib / module.__name__)
    return opt


def script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def path_with(base: Path, python: bool) -> str:
    """A PATH holding what the launcher and the stand-in use, and python3 only if asked."""
    bindir = base / "pathbin"
    bindir.mkdir()
    for tool in ("bash", "cat", "readlink", "rm"):
        found = shutil.which(tool)
        assert found, tool
        os.symlink(found, bindir / tool)
    if python:
        script(bindir / "python3", '#!/bin/sh\nexec "%s" "$@"\n' % sys.executable)
    return str(bindir)


class Run:
    """One wrapped cold start with two invocations; what the function sent and what was logged."""

    def __init__(self, ids: List[str], ext_log: str, runtime_log: str, state: str) -> None:
        self.ids = ids
        self.ext_log = ext_log
        self.runtime_log = runtime_log
        self.state = state


def run_wrapped(tmp_path: Path, real_dsn: str, relay: FakeUpstream, opt: Optional[Path] = None,
                wrapper: Path = WRAPPER, **overrides: str) -> Run:
    state = tmp_path / "state"
    env = function_env(real_dsn, tmp_path / "spool", SENTRY_EXT_UPSTREAM=relay.base_url,
                       SENTRY_EXT_STATE_FILE=str(state), **overrides)  # the real DSN, for extension and function
    env = {k: v for k, v in env.items() if v is not None and v != "<unset>"}
    ids: List[str] = []
    with Emulator(opt or layer_opt(tmp_path), task_root=SAMPLE_FUNCTION, env=env, exec_wrapper=str(wrapper),
                  function_name="handshake-test") as emu:
        emu.start()  # raises if Init fails
        for _ in range(2):
            result = emu.invoke({"messages": 1})
            assert result.status == "success", emu.output("runtime")
            ids += json.loads(result.response or b"{}")["event_ids"]
        shutdown = emu.shutdown()
        ext_log, runtime_log = emu.output(NAME), emu.output("runtime")
    assert shutdown.exit_codes == {NAME: 0} and not shutdown.killed, ext_log
    assert len(ids) == 4
    return Run(ids, ext_log, runtime_log, state.read_text() if state.exists() else "")


@pytest.fixture
def upstreams() -> Iterator[Tuple[FakeUpstream, FakeUpstream]]:
    """``direct`` is where the real DSN points; ``relay`` is where the extension forwards."""
    with FakeUpstream() as direct, FakeUpstream() as relay:
        yield direct, relay


def assert_direct(run: Run, direct: FakeUpstream, relay: FakeUpstream, why: str) -> None:
    assert direct.wait_for(lambda reqs: set(run.ids) <= set(direct.event_ids()), timeout=10), run.runtime_log
    assert relay.requests == []
    assert run.state.split()[0] == handshake.INERT, run.state
    assert why in run.ext_log and run.ext_log.count("inert:") == 1, run.ext_log
    assert "Traceback" not in run.ext_log
    wrapper_lines = [line for line in run.runtime_log.splitlines() if "[sentry-lambda-wrapper]" in line]
    assert len(wrapper_lines) == 1 and "the extension is inert" in wrapper_lines[0], run.runtime_log


def test_bad_setting_the_sdk_sends_directly(tmp_path: Path, upstreams: Tuple[FakeUpstream, FakeUpstream]) -> None:
    direct, relay = upstreams
    run = run_wrapped(tmp_path, direct.dsn(), relay, SENTRY_EXT_FLUSH="sometimes")
    assert_direct(run, direct, relay, "inert: SENTRY_EXT_FLUSH must be one of")


def test_port_taken_the_sdk_sends_directly(tmp_path: Path, upstreams: Tuple[FakeUpstream, FakeUpstream]) -> None:
    direct, relay = upstreams
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)  # something else serves that port: the SDK must not be pointed there
        port = blocker.getsockname()[1]
        run = run_wrapped(tmp_path, direct.dsn(), relay, SENTRY_EXT_PORT=str(port))
    assert_direct(run, direct, relay, "inert: cannot listen on 127.0.0.1:%d" % port)


@pytest.mark.parametrize("python", ["<unset>", "/nope/python3"], ids=["no-python", "bad-sentry-ext-python"])
def test_no_usable_python_the_stand_in_records_inert_and_the_sdk_sends_directly(
        tmp_path: Path, upstreams: Tuple[FakeUpstream, FakeUpstream], python: str) -> None:
    """No python3 on the runtime, or a bad ``SENTRY_EXT_PYTHON`` with no other Python to fall back to."""
    if os.path.exists("/var/lang/bin/python3"):
        pytest.skip("/var/lang/bin/python3 exists here")
    direct, relay = upstreams
    run = run_wrapped(tmp_path, direct.dsn(), relay, PATH=path_with(tmp_path, python=False), SENTRY_EXT_PYTHON=python)
    assert_direct(run, direct, relay, "inert: no python3 on this runtime")
    warnings = run.ext_log.count("SENTRY_EXT_PYTHON=%s is not an executable file" % python)
    assert warnings == (0 if python == "<unset>" else 1), run.ext_log


def test_bad_sentry_ext_python_falls_back_to_python3_on_path(
        tmp_path: Path, upstreams: Tuple[FakeUpstream, FakeUpstream]) -> None:
    if os.path.exists("/var/lang/bin/python3"):
        pytest.skip("/var/lang/bin/python3 exists here")
    direct, relay = upstreams
    for bad in ("/nope/python3", "no-such-python", str(tmp_path)):  # missing, not on PATH, a directory
        tmp = tmp_path / bad.strip("/").replace("/", "_")
        tmp.mkdir()
        relay.clear()
        run = run_wrapped(tmp, direct.dsn(), relay, PATH=path_with(tmp, python=True), SENTRY_EXT_PYTHON=bad)
        assert relay.wait_for(lambda reqs: set(run.ids) <= set(relay.event_ids()), timeout=10), run.ext_log
        assert run.ext_log.count("SENTRY_EXT_PYTHON=%s is not an executable file" % bad) == 1, run.ext_log
        assert "relaying" in run.ext_log
    assert direct.requests == []


def test_python_older_than_39_gets_one_line_and_stays_inert(
        tmp_path: Path, upstreams: Tuple[FakeUpstream, FakeUpstream]) -> None:
    """A fake interpreter that runs the launcher's code with ``sys.version_info`` of a 3.8."""
    direct, relay = upstreams
    old = script(tmp_path / "python3.8", '#!/bin/sh\n# argv: <flags> -c <code> <args...>\ncode=$3; shift 3\n'
                 'exec "%s" -I -c "import sys; sys.version_info = (3, 8, 18, \'final\', 0); '
                 'exec(compile(sys.argv.pop(1), \'<launcher>\', \'exec\'))" "$code" "$@"\n' % sys.executable)
    run = run_wrapped(tmp_path, direct.dsn(), relay, SENTRY_EXT_PYTHON=old)
    assert_direct(run, direct, relay, "inert: Python 3.8 at %s is older than 3.9" % sys.executable)


def test_old_python_and_no_bash_exits_with_one_clear_line(tmp_path: Path) -> None:
    """The one way left to fail: neither a usable Python nor bash. One line, exit 1."""
    import subprocess

    old = script(tmp_path / "python3.8", '#!/bin/sh\ncode=$3; shift 3\n'
                 'exec "%s" -I -c "import sys; sys.version_info = (3, 8, 18, \'final\', 0); '
                 'exec(compile(sys.argv.pop(1), \'<launcher>\', \'exec\'))" "$code" "$@"\n' % sys.executable)
    opt = layer_opt(tmp_path)
    proc = subprocess.run([str(opt / "extensions" / NAME)], capture_output=True, text=True, timeout=30,
                          env={"PATH": str(tmp_path / "nowhere"), "SENTRY_EXT_PYTHON": old,
                               "SENTRY_EXT_STATE_FILE": str(tmp_path / "state")})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "[sentry-lambda-extension] ERROR Python 3.8 at %s is older than 3.9 (set SENTRY_EXT_PYTHON to a "
        "Python >= 3.9), and no bash for the inert stand-in" % sys.executable]


def test_package_missing_from_the_layer_the_stand_in_takes_over(
        tmp_path: Path, upstreams: Tuple[FakeUpstream, FakeUpstream]) -> None:
    direct, relay = upstreams
    run = run_wrapped(tmp_path, direct.dsn(), relay, opt=layer_opt(tmp_path, with_package=False))
    assert_direct(run, direct, relay, "inert: package sentry_ext not found next to")


def test_package_that_cannot_be_imported_the_stand_in_takes_over(
        tmp_path: Path, upstreams: Tuple[FakeUpstream, FakeUpstream]) -> None:
    direct, relay = upstreams
    opt = layer_opt(tmp_path, with_package=False)
    broken = opt / "sentry-lambda-extension" / "sentry_ext"
    broken.mkdir()
    (broken / "__init__.py").write_text("")  # a damaged layer: the package without its modules
    run = run_wrapped(tmp_path, direct.dsn(), relay, opt=opt)
    assert_direct(run, direct, relay, "inert: cannot load sentry_ext from")
    assert "ModuleNotFoundError: No module named 'sentry_ext.main'" in run.ext_log


def test_active_extension_gets_the_sdk_and_the_org_id_reaches_the_trace_header(
        tmp_path: Path, upstreams: Tuple[FakeUpstream, FakeUpstream]) -> None:
    """The real DSN has an ``o<org>.`` host; the SDK, pointed at 127.0.0.1, still puts that org
    into the envelope header's ``trace`` (and so into the baggage it propagates)."""
    direct, relay = upstreams
    real = "https://%s@o%s.ingest.example.invalid/42" % (KEY, ORG)  # never contacted: the extension relays
    run = run_wrapped(tmp_path, real, relay)
    assert relay.wait_for(lambda reqs: set(run.ids) <= set(relay.event_ids()), timeout=10), run.ext_log
    state, pid, port = run.state.split()
    assert state == handshake.ACTIVE and int(pid) > 0 and int(port) > 0
    assert "[sentry-lambda-wrapper]" not in run.runtime_log
    traces = [rec.envelope.header.get("trace") for rec in relay.requests if rec.envelope is not None]
    traces = [t for t in traces if t]
    assert traces and all(t.get("org_id") == ORG for t in traces), traces


def test_without_the_python_hook_the_org_id_is_lost(tmp_path: Path,
                                                    upstreams: Tuple[FakeUpstream, FakeUpstream]) -> None:
    """Control for the test above: a wrapper without python-hook/ beside it rewrites the DSN
    alone, and the SDK's trace header has no org_id (what issue 13 reported)."""
    direct, relay = upstreams
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy2(WRAPPER, bare / WRAPPER.name)
    real = "https://%s@o%s.ingest.example.invalid/42" % (KEY, ORG)
    run = run_wrapped(tmp_path, real, relay, wrapper=bare / WRAPPER.name)
    assert relay.wait_for(lambda reqs: set(run.ids) <= set(relay.event_ids()), timeout=10), run.ext_log
    traces = [rec.envelope.header.get("trace") for rec in relay.requests if rec.envelope is not None]
    traces = [t for t in traces if t]
    assert traces and not [t for t in traces if "org_id" in t], traces


# -- the record itself -------------------------------------------------------------------------------

def test_record_is_one_line_replaced_whole(tmp_path: Path) -> None:
    path = str(tmp_path / "state")
    assert handshake.record(path, handshake.ACTIVE, 5333) is None
    assert Path(path).read_text() == "active %d 5333\n" % os.getpid()
    assert handshake.record(path, handshake.INERT, 5333) is None
    assert Path(path).read_text() == "inert %d 0\n" % os.getpid()
    assert os.listdir(tmp_path) == ["state"]  # no temp file left behind
    assert handshake.record(str(tmp_path / "missing" / "state"), handshake.ACTIVE, 1) is not None


def test_pipeline_failing_after_an_active_record_turns_it_inert_and_refuses_the_sdk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record said active (the runtime may already use the local DSN); the pipeline then fails
    to load: the record turns inert and the port refuses at once rather than hanging the SDK."""
    from sentry_ext import pipeline
    from sentry_ext.config import load
    from sentry_ext.awslambda.extensions_api import LambdaApi
    from sentry_ext.main import Extension

    port = free_port()
    state = tmp_path / "state"
    cfg = load({"SENTRY_DSN": "http://%s@127.0.0.1:9/42" % KEY, "SENTRY_EXT_PORT": str(port),
                "SENTRY_EXT_STATE_FILE": str(state), "SENTRY_EXT_SPOOL_DIR": str(tmp_path / "spool")})
    ext = Extension(cfg, NAME, api=LambdaApi("127.0.0.1:9"))
    sock = ext._claim()
    assert sock is not None and state.read_text().split()[::2] == ["active", str(port)]

    def broken(*args: object, **kwargs: object) -> None:
        raise ImportError("simulated damaged layer")

    monkeypatch.setattr(pipeline, "Pipeline", broken)
    ext._first_poll_sent.set()
    ext._start_pipeline(sock, None)
    assert ext.ready.is_set() and ext.pipeline is None
    assert state.read_text().split()[0] == handshake.INERT
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
