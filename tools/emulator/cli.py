"""Command line of the local Lambda emulator: run a function of your own with the extension.

``python3 tools/emulator/cli.py --task-root DIR`` (or ``python3 -m tools.emulator``) starts a fake
Sentry upstream on loopback, this checkout's extension (or a layer: ``--layer ZIP``, ``--opt DIR``),
and the function's handler under the real ``awslambdaric`` for a few invocations, freezing the
sandbox between them as Lambda does; it prints a table of the timings and what reached the
upstream (``--json`` for everything as JSON), then the extension's and the function's log.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # run as a script: make the ``tools`` package importable
    from pathlib import Path as _Path

    sys.path[0] = str(_Path(__file__).resolve().parents[2])

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from tools.emulator.base import INIT_TYPES
from tools.emulator.emulator import Emulator
from tools.emulator.state import EmulatorError, InvokeResult

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PROCESS_LOGGER = "tools.emulator.processes"

EPILOG = """\
--opt DIR expects a directory standing in for /opt: every executable in DIR/extensions/ is started
as an external extension, as Lambda does with the layers it unpacks into /opt, e.g.
  unzip dist/sentry-lambda-extension-0.1.0.zip -d /tmp/opt   ->   --opt /tmp/opt
(--layer dist/sentry-lambda-extension-0.1.0.zip does that unzip for you.)

Without SENTRY_DSN in --env, a fake Sentry upstream runs on 127.0.0.1, the extension gets its DSN
and the function the local form (http://<key>@127.0.0.1:<SENTRY_EXT_PORT>/<project>), as the exec
wrapper would give it. Nothing leaves the machine.

examples:
  python3 tools/emulator/cli.py --task-root my_function --handler app.handler
  python3 tools/emulator/cli.py --task-root my_function --layer dist/sentry-lambda-extension-0.1.0.zip \\
      --invocations 5 --payload '{"name": "test"}' --env SENTRY_EXT_FLUSH=background
  python3 tools/emulator/cli.py --task-root my_function --python ~/venvs/fn/bin/python --json
"""


# -- the runtime's interpreter -------------------------------------------------------------------

def default_python() -> str:
    """This project's ``.venv`` interpreter if there is one (it has awslambdaric), else this one."""
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def check_python(python: str, modules: Sequence[str] = ("awslambdaric",)) -> Optional[str]:
    """None if ``python`` imports ``modules`` (awslambdaric: it can be the function's runtime), else why not."""
    try:
        proc = subprocess.run([python, "-c", "import " + ", ".join(modules)], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return "cannot run %s: %s" % (python, exc)
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["exit code %d" % proc.returncode])[-1]
    return ("%s cannot run the function and the extension here: %s\n"
            "  create this project's .venv (it has them all): python3 tools/dev.py test --co -q\n"
            "  or install them into an interpreter of yours and pass it with --python PATH: "
            "pip install %s" % (python, last, " ".join(m.replace("_", "-") for m in modules)))


# -- output ----------------------------------------------------------------------------------------

HEADER = "%-4s %-15s %12s %16s %12s %14s" % ("inv", "status", "runtime ms", "post-runtime ms", "upstream",
                                            "before freeze")


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else "%.1f" % value


def table_row(index: int, result: InvokeResult, upstream: Optional[Any]) -> str:
    """One line per invocation: timings and, with a fake upstream, requests received so far and by the freeze."""
    if upstream is None:
        total = before = "-"
    else:
        requests = upstream.requests
        total = str(len(requests))
        # a reset sandbox is not frozen: "before freeze" has no meaning there
        before = "-" if result.reset else str(sum(1 for r in requests if result.freeze_t is None or r.t <= result.freeze_t))
    status = result.status + (" (reset)" if result.reset else "")
    return "%-4d %-15s %12s %16s %12s %14s" % (index, status, _ms(result.runtime_ms), _ms(result.post_runtime_ms),
                                            total, before)


class ProcessOutputFormatter(logging.Formatter):
    """``-v``: a process's own output line as it is (it names its process once), emulator lines
    with time, level and logger."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == PROCESS_LOGGER and message.startswith("["):
            return "%s %s" % (self.formatTime(record), message)
        return super().format(record)


def _log_section(title: str, text: str) -> str:
    return "\n--- %s ---\n%s" % (title, text.rstrip() or "(nothing)")


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", "replace")
    if isinstance(obj, float):
        return round(obj, 3)
    return obj


# -- arguments -------------------------------------------------------------------------------------

class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every real default in ``--help``; the epilog's examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _parse_kv(items: Optional[List[str]], parser: argparse.ArgumentParser, flag: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error("%s expects KEY=VALUE, got %r" % (flag, item))
        out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 tools/emulator/cli.py",
        description="Run a Lambda function with its extensions in a local emulated sandbox (real awslambdaric, "
                    "SIGSTOP freezes between invocations) and print the timings and what reached Sentry.",
        epilog=EPILOG, formatter_class=_HelpFormatter,
    )
    where = parser.add_argument_group("the function and its extensions")
    where.add_argument("--task-root", required=True, type=Path, metavar="DIR",
                       help="the function's code, standing in for /var/task (the handler's module is in it)")
    where.add_argument("--handler", default="app.handler", metavar="MODULE.FUNCTION", help="the handler, as in the function's configuration")
    where.add_argument("--python", default=None, metavar="PATH",
                       help="interpreter of the function's runtime; it needs awslambdaric and the function's own "
                            "packages (sentry-sdk...) (default: this project's .venv/bin/python if it exists, else "
                            "the interpreter running this tool)")
    opt = where.add_mutually_exclusive_group()
    opt.add_argument("--opt", type=Path, default=None, metavar="DIR",
                     help="a directory standing in for /opt, with the extensions in DIR/extensions/ (see below) "
                          "(default: this checkout's extension, bin/sentry-lambda-extension)")
    opt.add_argument("--layer", type=Path, default=None, metavar="ZIP",
                     help="a layer zip (python3 tools/build_layer.py), unpacked into a temporary /opt")
    where.add_argument("--exec-wrapper", default=None, metavar="PATH", type=_absolute,
                       help="AWS_LAMBDA_EXEC_WRAPPER for the runtime, e.g. "
                            "OPT/sentry-lambda-extension/bin/sentry-lambda-wrapper")
    where.add_argument("--env", action="append", metavar="KEY=VALUE",
                       help="the function's environment, seen by the runtime and the extensions (repeatable)")
    where.add_argument("--runtime-env", action="append", metavar="KEY=VALUE",
                       help="extra environment of the runtime only (repeatable)")

    run = parser.add_argument_group("the run")
    run.add_argument("--invocations", type=int, default=3, metavar="N", help="how many times to invoke the function")
    run.add_argument("--payload", default="{}", metavar="JSON", help="the event of every invocation")
    run.add_argument("--freeze-s", type=float, default=1.0, metavar="S", help="seconds the sandbox stays frozen between invocations")
    run.add_argument("--no-freeze", action="store_true", help="do not SIGSTOP the sandbox between invocations")
    run.add_argument("--no-telemetry", action="store_true",
                     help="answer Telemetry API subscriptions with 202 NotSupported, as other local emulators do")
    run.add_argument("--timeout-s", type=float, default=10.0, metavar="S", help="the function's timeout")
    run.add_argument("--memory-mb", type=int, default=128, metavar="MB", help="the function's memory setting")
    run.add_argument("--shutdown-window-ms", type=int, default=2000, metavar="MS", help="how long extensions get at SHUTDOWN")
    run.add_argument("--function-name", default="emulated-function", metavar="NAME", help="AWS_LAMBDA_FUNCTION_NAME")
    run.add_argument("--init-type", default="on-demand", choices=INIT_TYPES,
                     help="AWS_LAMBDA_INITIALIZATION_TYPE: snap-start restores a snapshot before the first "
                          "invocation; lambda-managed-instances runs --max-concurrency invocations at once")
    run.add_argument("--max-concurrency", type=int, default=4, metavar="N",
                     help="lambda-managed-instances: runtime workers, and invocations at a time")

    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print everything as JSON instead of the table and logs")
    out.add_argument("--no-logs", action="store_true", help="do not print the extensions' and the function's log")
    out.add_argument("-v", "--verbose", action="store_true",
                     help="the emulator's own debug log on stderr as it happens (process output included)")
    return parser


# -- the run ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _opt_dir(args: argparse.Namespace, tmp: Path) -> Iterator[Path]:
    if args.opt is not None:
        yield args.opt
    elif args.layer is not None:
        from tools.build_layer import unpack

        unpack(args.layer, tmp / "opt")
        yield tmp / "opt"
    else:
        from tools.sandbox import make_opt

        yield make_opt(tmp)


def _absolute(path: str) -> str:
    """A path given on the command line, made absolute (the runtime starts in the task root)."""
    return os.path.abspath(path)


def _local_env(env: Dict[str, str], runtime_env: Dict[str, str], python: str, tmp: Path,
               exec_wrapper: Optional[str]) -> None:
    """Loopback defaults for what the user did not set: ports, telemetry host, spool, the extension's
    Python, and, without an exec wrapper, the function's SDK pointed at the extension (the local form
    of ``SENTRY_DSN``). With one the function keeps the real DSN, as in Lambda: the wrapper rewrites
    it only if the extension relays, else the SDK sends straight to the upstream."""
    from tools.sandbox import function_env, local_dsn

    defaults = function_env(env.get("SENTRY_DSN", ""), tmp / "spool", python)
    for key, value in defaults.items():
        env.setdefault(key, value)
    if exec_wrapper is None and "SENTRY_DSN" not in runtime_env and "@" in env["SENTRY_DSN"]:
        runtime_env["SENTRY_DSN"] = local_dsn(env["SENTRY_DSN"], env["SENTRY_EXT_PORT"])


def run(args: argparse.Namespace, payload: Any, env: Dict[str, str], runtime_env: Dict[str, str],
        python: str) -> int:
    summary: Dict[str, Any] = {"invocations": [], "shutdown": None}
    ok = True
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sentry-ext-emulator-")))
        upstream = None
        if "SENTRY_DSN" not in env:
            from tools.fake_upstream import FakeUpstream

            upstream = stack.enter_context(FakeUpstream())
            env["SENTRY_DSN"] = upstream.dsn()
        _local_env(env, runtime_env, python, tmp, args.exec_wrapper)
        opt = stack.enter_context(_opt_dir(args, tmp))
        emu = stack.enter_context(Emulator(
            opt_dir=opt, runtime_cmd=[python, "-m", "awslambdaric", args.handler], task_root=args.task_root,
            handler=args.handler, env=env, runtime_env=runtime_env, function_name=args.function_name,
            timeout_s=args.timeout_s, memory_mb=args.memory_mb, freeze=not args.no_freeze,
            telemetry=not args.no_telemetry, shutdown_window_ms=args.shutdown_window_ms,
            exec_wrapper=args.exec_wrapper, init_type=args.init_type, max_concurrency=args.max_concurrency,
        ))
        say = (lambda line: None) if args.json else print
        say("function %s (%s in %s), runtime %s" % (args.function_name, args.handler, args.task_root, python))
        source = "this checkout's bin/sentry-lambda-extension" if args.opt is None and args.layer is None else opt
        say("extensions from %s; %s" % (source, "fake Sentry upstream on %s" % upstream.base_url if upstream
                                         else "SENTRY_DSN as given"))
        try:
            emu.start()
            summary["init_ms"] = emu.last_init_ms
            say("init: %s ms\n\n%s" % (_ms(emu.last_init_ms), HEADER))
            for index in range(args.invocations):
                if index:
                    emu.wait_frozen_for(args.freeze_s)
                batch = (emu.invoke_concurrently([payload] * args.max_concurrency) if emu.managed
                         else [emu.invoke(payload)])
                for res in batch:
                    ok = ok and res.status == "success"
                    summary["invocations"].append(res)
                    say(table_row(len(summary["invocations"]), res, upstream))
            shutdown = emu.shutdown()
            summary["shutdown"] = shutdown
            ok = ok and not shutdown.killed and all(c == 0 for c in shutdown.exit_codes.values())
            say("\nshutdown: exit codes %s%s" % (
                ", ".join("%s=%s after %s ms" % (name, code, _ms(shutdown.exit_ms.get(name)))
                          for name, code in sorted(shutdown.exit_codes.items())) or "none",
                "; SIGKILLed at the deadline: %s" % ", ".join(shutdown.killed) if shutdown.killed else ""))
        except EmulatorError as exc:
            summary["error"] = str(exc)
            ok = False
            say("\nERROR: %s" % exc)
        summary["extension_errors"] = emu.extension_errors
        names = sorted({r["name"] for r in emu.registrations})
        summary["logs"] = {name: emu.output(name) for name in names + ["runtime"]}
        if upstream is not None:
            types: Dict[str, int] = {}
            for r in upstream.requests:
                for item_type in r.item_types:
                    types[item_type] = types.get(item_type, 0) + 1
            summary["upstream"] = {"requests": len(upstream.requests), "items": types}
            say("upstream received %d request(s); items by type: %s" % (
                len(upstream.requests), ", ".join("%s=%d" % kv for kv in sorted(types.items())) or "none"))
        for error in emu.extension_errors:
            say("extension error: %s" % json.dumps(_jsonable(error)))
        if not args.no_logs:
            for name in names:
                say(_log_section("extension %s" % name, summary["logs"][name]))
            say(_log_section("function (runtime)", summary["logs"]["runtime"]))
    summary["ok"] = ok
    if args.json:
        print(json.dumps(_jsonable(summary), indent=2))
    else:
        print("\nRESULT: %s" % ("ok" if ok else "FAILED (see above)"))
    return 0 if ok else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.invocations < 0:
        parser.error("--invocations must be >= 0")
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        parser.error("--payload is not JSON: %s" % exc)
    env = _parse_kv(args.env, parser, "--env")
    runtime_env = _parse_kv(args.runtime_env, parser, "--runtime-env")
    for flag, path in (("--task-root", args.task_root), ("--opt", args.opt), ("--layer", args.layer)):
        if path is not None and not path.exists():
            parser.error("%s %s does not exist" % (flag, path))
    python = args.python or default_python()
    # the source tree's extension runs on the same interpreter and needs urllib3 and certifi (a layer has them)
    needs = ("awslambdaric",) if args.opt or args.layer else ("awslambdaric", "urllib3", "certifi")
    problem = check_python(python, needs)
    if problem:
        print("error: " + problem, file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(ProcessOutputFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, handlers=[handler])
    return run(args, payload, env, runtime_env, os.fspath(python))


if __name__ == "__main__":
    sys.exit(main())
