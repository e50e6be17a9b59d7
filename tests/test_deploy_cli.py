"""tools/deploy/attach-layer.sh and publish-layer.sh against a fake ``aws`` on PATH: the function's
other layers and environment variables survive the attach; sh -n and shellcheck (when installed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "tools" / "deploy"
ATTACH = DEPLOY / "attach-layer.sh"
PUBLISH = DEPLOY / "publish-layer.sh"
SCRIPTS = [ATTACH, PUBLISH]
WRAPPER = "/opt/sentry-lambda-extension/bin/sentry-lambda-wrapper"
LAYER = "arn:aws:lambda:eu-west-1:123456789012:layer:sentry-lambda-extension"
OTHER = "arn:aws:lambda:eu-west-1:123456789012:layer:other"
DSN = "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42"

#: A stand-in for the AWS CLI: records each call (argv and, for --cli-input-json file://, the
#: request), answers get-function-configuration from $FAKE_AWS_CONFIG, and checks the options the
#: scripts rely on.
FAKE_AWS = textwrap.dedent(
    '''
    import json, os, sys

    args = sys.argv[1:]
    record = {"argv": args, "pager": os.environ.get("AWS_PAGER")}
    def opt(name):
        return args[args.index(name) + 1] if name in args else None
    assert args[0] == "lambda", args
    if args[1] == "get-function-configuration":
        assert opt("--function-name") and opt("--output") == "json", args
        print(open(os.environ["FAKE_AWS_CONFIG"]).read())
    elif args[1] == "update-function-configuration":
        source = opt("--cli-input-json")
        assert source.startswith("file://"), "the request must not be on the command line"
        path = source[len("file://"):]
        record["mode"] = oct(os.stat(path).st_mode & 0o777)
        request = json.load(open(path))
        record["request"] = request
        assert opt("--query") == "Layers[].Arn" and opt("--output") == "text", args
        print("\\t".join(request["Layers"]))
    elif args[1] == "wait":
        assert args[2] == "function-updated" and opt("--function-name"), args
    elif args[1] == "publish-layer-version":
        assert opt("--zip-file").startswith("fileb://") and opt("--query") == "LayerVersionArn", args
        print("arn:aws:lambda:%s:123456789012:layer:%s:7" % (opt("--region") or "eu-west-1", opt("--layer-name")))
    else:
        sys.exit("fake aws: unexpected call %r" % args)
    with open(os.environ["FAKE_AWS_LOG"], "a") as log:
        log.write(json.dumps(record) + "\\n")
    '''
)


class FakeAws:
    def __init__(self, tmp: Path) -> None:
        self.bin = tmp / "bin"
        self.bin.mkdir()
        aws = self.bin / "aws"
        aws.write_text("#!%s\n%s" % (sys.executable, FAKE_AWS))
        aws.chmod(0o755)
        self.config = tmp / "config.json"
        self.log = tmp / "aws.log"
        self.env = dict(os.environ, PATH="%s:%s" % (self.bin, os.environ.get("PATH", "/usr/bin:/bin")),
                        FAKE_AWS_CONFIG=str(self.config), FAKE_AWS_LOG=str(self.log), TMPDIR=str(tmp))
        self.env.pop("SENTRY_DSN", None)
        self.tmp = tmp

    def run(self, script: Path, *args: str, shell: str = "sh", **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([shell, str(script), *args], env=dict(self.env, **env), capture_output=True,
                              text=True, timeout=60, cwd=str(self.tmp))

    def calls(self) -> List[Dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def update(self) -> Optional[Dict[str, Any]]:
        updates = [c for c in self.calls() if c["argv"][1] == "update-function-configuration"]
        assert len(updates) <= 1
        return updates[0] if updates else None


@pytest.fixture
def aws(tmp_path: Path) -> FakeAws:
    return FakeAws(tmp_path)


def config(layers: List[str], env: Optional[Dict[str, str]], **extra: Any) -> str:
    cfg: Dict[str, Any] = {"FunctionName": "fn", "Runtime": "python3.12", "RevisionId": "rev-1"}
    cfg["Layers"] = [{"Arn": arn, "CodeSize": 1} for arn in layers]
    if env is not None:
        cfg["Environment"] = {"Variables": env}
    cfg.update(extra)
    return json.dumps(cfg)


SHELLS = [s for s in ("sh", "dash", "bash") if shutil.which(s)]


@pytest.mark.parametrize("shell", SHELLS)
def test_attach_keeps_other_layers_and_variables(aws: FakeAws, shell: str) -> None:
    env = {"FOO": "a,b=c", "SENTRY_DSN": "https://old@o1.ingest.sentry.io/42", "EMPTY": ""}
    aws.config.write_text(config(["%s:3" % OTHER, "%s:1" % LAYER, "arn:aws:lambda:eu-west-1:1:layer:third:9"], env))
    proc = aws.run(ATTACH, "--dsn", DSN, "fn", "%s:2" % LAYER, shell=shell)
    assert proc.returncode == 0, proc.stderr
    update = aws.update()
    assert update is not None and update["mode"] == "0o600"
    request = update["request"]
    # the old version replaced in place, the others kept in their order
    assert request["Layers"] == ["%s:3" % OTHER, "%s:2" % LAYER, "arn:aws:lambda:eu-west-1:1:layer:third:9"]
    assert request["Environment"]["Variables"] == {"FOO": "a,b=c", "EMPTY": "", "SENTRY_DSN": DSN,
                                                   "AWS_LAMBDA_EXEC_WRAPPER": WRAPPER}
    assert request["RevisionId"] == "rev-1" and request["FunctionName"] == "fn"
    assert [c["argv"][1] for c in aws.calls()] == ["get-function-configuration", "update-function-configuration",
                                                   "wait"]
    assert {c["pager"] for c in aws.calls()} == {""}  # AWS CLI v2 must not open a pager
    assert proc.stdout.split() == request["Layers"]
    assert "set: SENTRY_DSN, AWS_LAMBDA_EXEC_WRAPPER" in proc.stderr
    assert not list(aws.tmp.glob("attach-layer.*"))  # the request file is removed


def test_attach_appends_and_takes_the_dsn_from_the_environment(aws: FakeAws) -> None:
    aws.config.write_text(config(["%s:3" % OTHER], None))
    proc = aws.run(ATTACH, "fn", "%s:5" % LAYER, SENTRY_DSN=DSN)
    assert proc.returncode == 0, proc.stderr
    request = aws.update()["request"]  # type: ignore[index]
    assert request["Layers"] == ["%s:3" % OTHER, "%s:5" % LAYER]
    assert request["Environment"]["Variables"] == {"SENTRY_DSN": DSN, "AWS_LAMBDA_EXEC_WRAPPER": WRAPPER}


def test_attach_keeps_a_foreign_wrapper_and_an_existing_dsn(aws: FakeAws) -> None:
    env = {"SENTRY_DSN": DSN, "AWS_LAMBDA_EXEC_WRAPPER": "/opt/otel-instrument"}
    aws.config.write_text(config([], env))
    proc = aws.run(ATTACH, "fn", "%s:5" % LAYER)
    assert proc.returncode == 0, proc.stderr
    assert aws.update()["request"]["Environment"]["Variables"] == env  # type: ignore[index]
    assert "WARNING: keeping AWS_LAMBDA_EXEC_WRAPPER=/opt/otel-instrument" in proc.stderr
    # --no-wrapper leaves the variable alone and says nothing about it
    aws.log.unlink()
    aws.config.write_text(config([], {"SENTRY_DSN": DSN}))
    proc = aws.run(ATTACH, "--no-wrapper", "fn", "%s:5" % LAYER)
    assert proc.returncode == 0, proc.stderr
    assert aws.update()["request"]["Environment"]["Variables"] == {"SENTRY_DSN": DSN}  # type: ignore[index]


@pytest.mark.parametrize("layers, env, extra, args, message", [
    ([], {"FOO": "1"}, {}, [], "fn has no SENTRY_DSN: pass --dsn DSN"),
    (["%s:%d" % (OTHER, i) for i in range(1, 6)], {"SENTRY_DSN": DSN}, {}, [], "would have 6 layers; Lambda allows 5"),
    ([], None, {"PackageType": "Image"}, ["--dsn", DSN], "container image function"),
    ([], None, {"Environment": {"Error": {"ErrorCode": "AccessDeniedException", "Message": "KMS denied"}}},
     ["--dsn", DSN], "cannot read the environment variables of fn (KMS denied)"),
])
def test_attach_refuses_without_updating(aws: FakeAws, layers: List[str], env: Optional[Dict[str, str]],
                                         extra: Dict[str, Any], args: List[str], message: str) -> None:
    aws.config.write_text(config(layers, env, **extra))
    proc = aws.run(ATTACH, *args, "fn", "%s:2" % LAYER)
    assert proc.returncode == 1 and message in proc.stderr
    assert aws.update() is None


def test_attach_dry_run_and_bad_arguments(aws: FakeAws) -> None:
    aws.config.write_text(config([], {"SENTRY_DSN": DSN}))
    proc = aws.run(ATTACH, "--dry-run", "fn", "%s:2" % LAYER)
    assert proc.returncode == 0 and "dry run: fn not changed" in proc.stderr and aws.update() is None
    assert "-> %s:2" % LAYER in proc.stderr
    proc = aws.run(ATTACH, "fn", LAYER)  # no version
    assert proc.returncode == 1 and "not a layer version ARN" in proc.stderr
    proc = aws.run(ATTACH, "fn")
    assert proc.returncode == 2 and proc.stderr.startswith("usage: tools/deploy/attach-layer.sh")
    assert [c["argv"][1] for c in aws.calls()] == ["get-function-configuration"]  # the dry run's only call


def test_publish_declares_both_architectures_and_every_python(aws: FakeAws, tmp_path: Path) -> None:
    layer_zip = tmp_path / "sentry-lambda-extension-0.1.0.zip"
    layer_zip.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    proc = aws.run(PUBLISH, "--region", "eu-west-1", "--region", "us-east-1", str(layer_zip))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["arn:aws:lambda:eu-west-1:123456789012:layer:sentry-lambda-extension:7",
                                   "arn:aws:lambda:us-east-1:123456789012:layer:sentry-lambda-extension:7"]
    argv = aws.calls()[0]["argv"]
    arch = argv.index("--compatible-architectures")
    assert argv[arch + 1:arch + 3] == ["x86_64", "arm64"]
    runtimes = argv.index("--compatible-runtimes")
    from tools.build_layer import LAMBDA_PYTHONS

    assert argv[runtimes + 1:runtimes + 1 + len(LAMBDA_PYTHONS)] == ["python" + v for v in LAMBDA_PYTHONS]
    assert argv[argv.index("--zip-file") + 1] == "fileb://%s" % layer_zip
    assert argv[argv.index("--description") + 1] == "sentry-lambda-extension-0.1.0"
    proc = aws.run(PUBLISH, str(tmp_path / "missing.zip"))
    assert proc.returncode == 1 and "python3 tools/build_layer.py" in proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_posix_sh_and_executable(script: Path) -> None:
    assert os.access(str(script), os.X_OK) and script.read_text().startswith("#!/bin/sh\n")
    for shell in SHELLS:
        proc = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, "%s -n: %s" % (shell, proc.stderr)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck); sh -n passed")
    proc = subprocess.run([shellcheck, "--shell=sh", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
