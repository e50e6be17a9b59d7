"""bin/sentry-lambda-wrapper: the DSN and NO_PROXY rewrite for the runtime process, under POSIX
shells, and end to end as AWS_LAMBDA_EXEC_WRAPPER in the emulator with an unmodified sentry-sdk
function that reads the real SENTRY_DSN."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from helpers import KEY
from sentry_ext.protocol.dsn import Dsn, DsnError
from tools.emulator import Emulator
from tools.fake_upstream import FakeUpstream
from tools.netutil import free_port
from tools.sandbox import function_env

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "bin" / "sentry-lambda-wrapper"
LAUNCHER = ROOT / "bin" / "sentry-lambda-extension"
SAMPLE_FUNCTION = ROOT / "tools" / "sample_function"

# POSIX shells to run the wrapper under: dash is the strictest here; bash --posix is what
# /bin/sh is on Amazon Linux (Lambda's base images).
SHELLS = [s for s in (["dash"], ["bash", "--posix"]) if shutil.which(s[0])]
DUMP_ENV = [sys.executable, "-I", "-S", "-c", "import json, os; print(json.dumps(dict(os.environ)))"]


ACTIVE = "active"  # run_wrapper's default record: an active extension (this test process) on the port


def run_wrapper(env: Dict[str, str], shell: Optional[List[str]] = None,
                cmd: Optional[List[str]] = None, record: Optional[str] = ACTIVE) -> subprocess.CompletedProcess:
    """Run the wrapper with the extension's record in a private state file (``None``: no file)."""
    argv = (shell or []) + [str(WRAPPER)] + (cmd if cmd is not None else DUMP_ENV)
    with tempfile.TemporaryDirectory(prefix="wrapper-test-") as tmp:
        state = os.path.join(tmp, "state")
        if record == ACTIVE:
            record = "active %d %s\n" % (os.getpid(), env.get("SENTRY_EXT_PORT", "5333"))
        if record is not None:
            with open(state, "w") as fh:
                fh.write(record)
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SENTRY_EXT_STATE_FILE": state}
        base.update(env)
        return subprocess.run(argv, env=base, capture_output=True, text=True, timeout=30)


def wrapped_env(env: Dict[str, str], shell: Optional[List[str]] = None) -> Dict[str, str]:
    proc = run_wrapper(env, shell)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def expected_local(real: str, port: int) -> str:
    """The local DSN according to the extension's own DSN parser."""
    dsn = Dsn.parse(real)
    return "http://%s@127.0.0.1:%d/%s" % (dsn.public_key, port, dsn.project_id)


VALID = [
    "https://%s@o1.ingest.sentry.io/42" % KEY,
    "https://%s@o1.ingest.us.sentry.io/4508000000000000" % KEY,
    "http://%s@sentry.internal:9000/7" % KEY,
    "https://%s:deprecatedsecret@sentry.example.com/1" % KEY,
    "https://%s@sentry.example.com/sentry/prefix/42" % KEY,  # path prefix: the extension keeps it upstream
    "https://%s@sentry.example.com/42/" % KEY,
    "https://%s@[2001:db8::1]:8443/42" % KEY,
    "https://%s@sentry.example.com/42?timeout=3#frag" % KEY,
]

MALFORMED = [
    "",
    "nonsense",
    "o1.ingest.sentry.io/42",
    "ftp://%s@host/42" % KEY,
    "https://o1.ingest.sentry.io/42",  # no key
    "https://%s@o1.ingest.sentry.io" % KEY,  # no project
    "https://%s@o1.ingest.sentry.io/" % KEY,
    "https://%s@o1.ingest.sentry.io/project" % KEY,  # project not numeric
    "https://%s@/42" % KEY,  # no host
]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@pytest.mark.parametrize("real", VALID)
def test_rewrites_a_valid_dsn_to_the_extension(shell: List[str], real: str) -> None:
    env = wrapped_env({"SENTRY_DSN": real}, shell)
    assert env["SENTRY_DSN"] == expected_local(real, 5333)
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1"
    assert not [k for k in env if k.startswith("_sle_")]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@pytest.mark.parametrize("real", MALFORMED)
def test_leaves_the_environment_alone_for_a_missing_or_malformed_dsn(shell: List[str], real: str) -> None:
    given = {"SENTRY_DSN": real, "NO_PROXY": "corp.example"} if real else {"NO_PROXY": "corp.example"}
    proc = run_wrapper(given, shell)
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)
    assert env.get("SENTRY_DSN") == given.get("SENTRY_DSN")
    assert env["NO_PROXY"] == "corp.example" and "no_proxy" not in env
    if real:
        assert "environment left unchanged" in proc.stderr
        with pytest.raises(DsnError):  # the extension rejects it too, so it is inert: no rewrite
            Dsn.parse(real)
    else:
        assert proc.stderr == ""


def test_uses_the_port_the_extension_recorded() -> None:
    real = VALID[0]
    assert wrapped_env({"SENTRY_DSN": real, "SENTRY_EXT_PORT": "6123"})["SENTRY_DSN"] == expected_local(real, 6123)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


NOT_RELAYING = [
    (None, "no running extension on port 5333 recorded in"),
    ("inert {pid} 0\n", "the extension is inert"),
    ("active {dead} 5333\n", "no running extension"),  # left in /tmp by an earlier sandbox
    ("active {pid} 6000\n", "no running extension on port 5333"),  # another port than configured
    ("active 0 5333\n", "no running extension"),  # kill -0 0 would succeed: must not count
    ("active -{pid} 5333\n", "no running extension"),
    ("active x 5333\n", "no running extension"),
    ("active {pid}\n", "no running extension"),
    ("", "no running extension"),
    ("\x00\xff garbage", "no running extension"),
]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@pytest.mark.parametrize("record, why", NOT_RELAYING)
def test_leaves_the_dsn_alone_unless_a_live_extension_recorded_active(shell: List[str], record: Optional[str],
                                                                      why: str) -> None:
    """Without an ``active`` record of a live process on the configured port, the SDK keeps the
    real DSN (it sends directly), with one line on stderr saying so."""
    if record is not None:
        record = record.format(pid=os.getpid(), dead=dead_pid())
    proc = run_wrapper({"SENTRY_DSN": VALID[0], "NO_PROXY": "corp.example"}, shell, record=record)
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)
    assert env["SENTRY_DSN"] == VALID[0] and env["NO_PROXY"] == "corp.example" and "no_proxy" not in env
    assert "SENTRY_EXT_ORG_ID" not in env and "PYTHONPATH" not in env
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and why in lines[0] and "the SDK sends directly to Sentry" in lines[0], proc.stderr
    # Without a DSN there is nothing to say.
    assert run_wrapper({}, shell, record=record).stderr == ""


@pytest.mark.parametrize("given, expected", [
    ({}, "localhost,127.0.0.1"),
    ({"NO_PROXY": ".corp.example"}, ".corp.example,localhost,127.0.0.1"),
    ({"no_proxy": "a,b,"}, "a,b,localhost,127.0.0.1"),
    ({"NO_PROXY": "127.0.0.1,localhost"}, "127.0.0.1,localhost"),
    ({"no_proxy": "x", "NO_PROXY": "y"}, "x,y,localhost,127.0.0.1"),  # lowercase wins in Python: keep both
    ({"no_proxy": "x", "NO_PROXY": "x"}, "x,localhost,127.0.0.1"),
])
def test_no_proxy_covers_loopback_in_both_spellings(given: Dict[str, str], expected: str) -> None:
    env = wrapped_env(dict(given, SENTRY_DSN=VALID[0]))
    assert env["NO_PROXY"] == env["no_proxy"] == expected


def test_python_sees_loopback_as_bypassed_even_with_a_proxy() -> None:
    code = ("import os, urllib.request; print(urllib.request.proxy_bypass_environment('127.0.0.1'),"
            " urllib.request.getproxies().get('http'), os.environ['SENTRY_DSN'])")
    proc = run_wrapper({"SENTRY_DSN": VALID[0], "HTTP_PROXY": "http://proxy.invalid:3128",
                        "no_proxy": "corp.example"}, cmd=[sys.executable, "-I", "-c", code])
    bypass, proxy, dsn = proc.stdout.split()
    assert (bypass, proxy) == ("True", "http://proxy.invalid:3128")
    assert dsn.startswith("http://%s@127.0.0.1:5333/" % KEY)


def test_execs_the_runtime_with_its_arguments_and_exit_code() -> None:
    proc = run_wrapper({"SENTRY_DSN": VALID[0]}, cmd=["sh", "-c", 'printf "%s|" "$@"; exit 7', "sh", "a b", "", "c*"])
    assert proc.returncode == 7 and proc.stdout == "a b||c*|"
    proc = run_wrapper({}, cmd=[])
    assert proc.returncode == 2 and "usage" in proc.stderr


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_works_for_a_node_runtime() -> None:
    proc = run_wrapper({"SENTRY_DSN": VALID[4]},
                       cmd=["node", "-e", "process.stdout.write(process.env.SENTRY_DSN + ' ' + process.env.no_proxy)"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "%s localhost,127.0.0.1" % expected_local(VALID[4], 5333)


def test_is_posix_sh_without_subshells() -> None:
    text = WRAPPER.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert os.access(WRAPPER, os.X_OK)
    code = [line.split("#", 1)[0] for line in text.splitlines() if not line.lstrip().startswith("#")]
    for construct in ("$(", "`", "[[", "function ", "local ", "<<<", "${!", "source "):
        assert not any(construct in line for line in code), construct
    for shell in SHELLS:
        assert subprocess.run(shell + ["-n", str(WRAPPER)]).returncode == 0


# -- end to end ------------------------------------------------------------------------------------

def make_opt(base: Path) -> Path:
    """An /opt holding the source tree's extension: extensions/<launcher> and sentry_ext beside it."""
    opt = base / "opt"
    (opt / "extensions").mkdir(parents=True)
    shutil.copy2(LAUNCHER, opt / "extensions" / LAUNCHER.name)
    os.symlink(ROOT / "sentry_ext", opt / "sentry_ext")
    return opt


def run_function(tmp_path: Path, real_dsn: str, upstream: FakeUpstream, wrapper: Optional[str],
                 runtime_env: Dict[str, str]) -> List[str]:
    """Two invocations of the unmodified sample function; returns the event ids it captured."""
    env = function_env(real_dsn, tmp_path / "spool", SENTRY_EXT_UPSTREAM=upstream.base_url,
                       SENTRY_EXT_STATE_FILE=str(tmp_path / "state"))  # the real DSN, for extension and function
    del env["NO_PROXY"]  # the wrapper must add 127.0.0.1 itself (see the HTTP_PROXY test)
    ids: List[str] = []
    with Emulator(make_opt(tmp_path), task_root=SAMPLE_FUNCTION, env=env, runtime_env=runtime_env,
                  exec_wrapper=wrapper, function_name="wrapper-test") as emu:
        emu.start()
        for _ in range(2):
            result = emu.invoke({"messages": 1})
            assert result.status == "success", emu.output("runtime")
            ids += json.loads(result.response or b"{}")["event_ids"]
        emu.shutdown()
    assert len(ids) == 4
    return ids


def test_exec_wrapper_routes_an_unmodified_function_through_the_extension(tmp_path: Path) -> None:
    """The real DSN points at ``direct`` (which must see nothing); the extension forwards to
    ``relayed``. HTTP_PROXY (runtime only) points at a closed port: the SDK reaches the extension
    only because the wrapper put 127.0.0.1 in NO_PROXY."""
    with FakeUpstream() as direct, FakeUpstream() as relayed:
        dead_proxy = "http://127.0.0.1:%d" % free_port()
        ids = run_function(tmp_path, direct.dsn(), relayed, str(WRAPPER), {"HTTP_PROXY": dead_proxy})
        assert relayed.wait_for(lambda reqs: set(ids) <= set(relayed.event_ids()), timeout=10), relayed.event_ids()
        assert direct.requests == []
        assert all(r.auth.get("sentry_key") == KEY for r in relayed.requests)
        assert all(r.path.startswith("/api/42/") for r in relayed.requests)


def test_without_the_wrapper_the_same_function_bypasses_the_extension(tmp_path: Path) -> None:
    """Control: the same set-up without AWS_LAMBDA_EXEC_WRAPPER sends straight to the real DSN."""
    with FakeUpstream() as direct, FakeUpstream() as relayed:
        ids = run_function(tmp_path, direct.dsn(), relayed, None, {})
        assert direct.wait_for(lambda reqs: set(ids) <= set(direct.event_ids()), timeout=10)
        # only the extension's own trace metrics (Lambda's report figures) reach it, none of the SDK's data
        assert [r for r in relayed.requests if r.envelope is None or r.envelope.item_types != ["trace_metric"]] == []


# -- organisation id ---------------------------------------------------------------------------------

HOOK_DIR = str(ROOT / "bin" / "python-hook")


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_hands_on_the_org_id_of_an_o_org_host(shell: List[str]) -> None:
    env = wrapped_env({"SENTRY_DSN": "https://%s@o4508.ingest.us.sentry.io/42" % KEY, "PYTHONPATH": "/var/task"},
                      shell)
    assert env["SENTRY_EXT_ORG_ID"] == "4508"
    assert env["PYTHONPATH"] == HOOK_DIR + ":/var/task"
    # An explicit value wins (self-hosted, Relay); no o<org> host and none given: nothing is added.
    env = wrapped_env({"SENTRY_DSN": "https://%s@sentry.example.com/42" % KEY, "SENTRY_EXT_ORG_ID": "77"}, shell)
    assert env["SENTRY_EXT_ORG_ID"] == "77" and env["PYTHONPATH"] == HOOK_DIR
    for host in ("sentry.example.com", "oops.example.com", "o12x.example.com", "o.example.com"):
        env = wrapped_env({"SENTRY_DSN": "https://%s@%s/42" % (KEY, host)}, shell)
        assert "SENTRY_EXT_ORG_ID" not in env and "PYTHONPATH" not in env, host


def run_hooked(tmp_path: Path, code: str, org: str = "4508", shadowed: Optional[str] = None) -> str:
    """Run ``code`` in a Python started like the wrapper starts one (the hook first on PYTHONPATH)."""
    path = [HOOK_DIR]
    if shadowed is not None:
        other = tmp_path / "other"
        other.mkdir()
        (other / "sitecustomize.py").write_text(shadowed)
        path.append(str(other))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": ":".join(path), "SENTRY_EXT_ORG_ID": org}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout.strip()


def test_python_hook_sets_the_default_org_id_and_keeps_an_explicit_one(tmp_path: Path) -> None:
    code = ("import sys; assert 'sentry_sdk' not in sys.modules; import sentry_sdk; "
            "from sentry_sdk.utils import Dsn; sentry_sdk.init('http://k@127.0.0.1:9/1'); "
            "print(sentry_sdk.get_client().parsed_dsn.org_id, Dsn('http://k@127.0.0.1:9/1').org_id, "
            "sentry_sdk.Client('http://k@127.0.0.1:9/1', org_id='9').parsed_dsn.org_id)")
    assert run_hooked(tmp_path, code) == "4508 None 9"
    assert run_hooked(tmp_path, code.replace("print(", "print('x', "), org="") == "x None None 9"


def test_python_hook_runs_the_sitecustomize_it_shadows_and_leaves_the_path(tmp_path: Path) -> None:
    code = "import sys, sitecustomize; print(sitecustomize.MARK, %r in sys.path)" % HOOK_DIR
    assert run_hooked(tmp_path, code, shadowed="MARK = 'theirs'\n") == "theirs False"
