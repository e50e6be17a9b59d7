"""The emulator and the demo as a user runs them: ``python3 tools/emulator/cli.py`` on a handler file
of one's own (script form, from another directory), ``--json``, ``--layer``, a runtime interpreter
without awslambdaric, ``--help``; ``python3 tools/demo.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import pytest

from tools import build_layer

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "tools" / "emulator" / "cli.py"
DEMO = ROOT / "tools" / "demo.py"
EXT = "sentry-lambda-extension"

USER_HANDLER = textwrap.dedent(
    '''
    import os

    import sentry_sdk
    from sentry_sdk.integrations.aws_lambda import AwsLambdaIntegration

    sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], integrations=[AwsLambdaIntegration()])


    def main(event, context):
        sentry_sdk.capture_message("hello %s" % event["name"])
        print("handled", event["name"])
        return {"ok": True}
    '''
)


@pytest.fixture
def user_function(tmp_path: Path) -> Path:
    root = tmp_path / "my_function"
    root.mkdir()
    (root / "handler.py").write_text(USER_HANDLER)
    return root


def run_script(script: Path, args: List[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python3 tools/...`` from another directory, on an interpreter without site-packages (as a
    system python3 without awslambdaric): the script must find the ``tools`` package itself and run
    the function on the project's .venv."""
    return subprocess.run([sys.executable, "-S", str(script), *args], cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout)


def test_cli_runs_a_users_handler_file_and_prints_a_table_and_logs(user_function: Path, tmp_path: Path) -> None:
    proc = run_script(CLI, ["--task-root", str(user_function), "--handler", "handler.main", "--invocations", "2",
                            "--freeze-s", "0.05", "--payload", '{"name": "ada"}',
                                "--env", "SENTRY_EXT_METRICS=off"], cwd=tmp_path)  # the SDK's events alone
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("inv "))
    assert "runtime ms" in lines[header] and "post-runtime ms" in lines[header]
    rows = [line.split() for line in lines[header + 1:header + 3]]
    assert [r[:2] for r in rows] == [["1", "success"], ["2", "success"]]
    # end mode: each invocation's event reached the upstream before its freeze
    assert [int(r[-1]) for r in rows] == [1, 2] and [int(r[-2]) for r in rows] == [1, 2]
    assert "upstream received 2 request(s); items by type: event=2" in out
    # the extension's log, each line prefixed once by its name; the function's own output
    ext_log = out.split("--- extension %s ---\n" % EXT, 1)[1].split("\n---", 1)[0].splitlines()
    assert ext_log[0].startswith("[%s] INFO registered" % EXT)
    assert all(line.startswith("[%s] " % EXT) and not line.startswith("[%s] [" % EXT) for line in ext_log)
    assert any("summary: received=2 forwarded=2" in line for line in ext_log)
    assert out.count("handled ada") == 2
    assert lines[-1] == "RESULT: ok"


def test_cli_json_with_a_layer_zip(user_function: Path, tmp_path: Path) -> None:
    layer = build_layer.build(out_dir=tmp_path / "dist", bytecode="none").path
    proc = run_script(CLI, ["--task-root", str(user_function), "--handler", "handler.main", "--invocations", "1",
                            "--payload", '{"name": "bob"}', "--layer", str(layer), "--json",
                            "--env", "SENTRY_EXT_METRICS=off"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["ok"] is True
    assert [inv["status"] for inv in summary["invocations"]] == ["success"]
    assert summary["shutdown"]["exit_codes"] == {EXT: 0}
    assert summary["upstream"] == {"requests": 1, "items": {"event": 1}}
    assert "INFO registered" in summary["logs"][EXT] and "handled bob" in summary["logs"]["runtime"]


@pytest.mark.parametrize("setting,relays", [("SENTRY_EXT_FLUSH=end", True), ("SENTRY_EXT_FLUSH=sometimes", False)])
def test_cli_with_the_exec_wrapper_delivers_whether_the_extension_relays_or_is_inert(
        user_function: Path, tmp_path: Path, setting: str, relays: bool) -> None:
    """With --exec-wrapper the function keeps the real DSN, as in Lambda: the wrapper points the SDK
    at the extension only when it relays; an inert extension leaves the SDK sending straight upstream."""
    proc = run_script(CLI, ["--task-root", str(user_function), "--handler", "handler.main", "--invocations", "1",
                            "--payload", '{"name": "eve"}', "--exec-wrapper",  # relative to the user's directory
                            os.path.relpath(ROOT / "bin" / "sentry-lambda-wrapper", tmp_path), "--env", setting,
                            "--env", "SENTRY_EXT_METRICS=off", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["upstream"] == {"requests": 1, "items": {"event": 1}}, summary["logs"]
    assert ("inert:" in summary["logs"][EXT]) is not relays, summary["logs"][EXT]
    assert ("SENTRY_DSN left unchanged" in summary["logs"]["runtime"]) is not relays, summary["logs"]["runtime"]


def test_cli_names_a_runtime_interpreter_without_awslambdaric(user_function: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare-python"
    bare.write_text('#!/bin/sh\nexec "%s" -S "$@"\n' % sys.executable)  # no site-packages: no awslambdaric
    bare.chmod(0o755)
    proc = run_script(CLI, ["--task-root", str(user_function), "--python", str(bare)], cwd=tmp_path)
    assert proc.returncode == 2
    assert "No module named 'awslambdaric'" in proc.stderr
    assert "--python PATH" in proc.stderr and "python3 tools/dev.py test --co -q" in proc.stderr


def test_cli_help_shows_defaults_and_what_opt_expects(tmp_path: Path) -> None:
    proc = run_script(CLI, ["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    for expected in ("--invocations N how many times to invoke the function (default: 3)",
                     "(default: app.handler)", "(default: 1.0)", "--opt DIR expects a directory standing in for /opt",
                     "DIR/extensions/", "unzip dist/sentry-lambda-extension-0.1.0.zip -d /tmp/opt", "--json",
                     "default: this project's .venv/bin/python"):
        assert expected in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_demo_runs_as_a_script(tmp_path: Path) -> None:
    proc = run_script(DEMO, ["--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "--flush" in proc.stdout and "--python" in proc.stdout
    proc = run_script(DEMO, ["--invocations", "1", "--freeze-s", "0.05"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESULT: every captured event reached the upstream" in proc.stdout
