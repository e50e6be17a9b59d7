"""Command line: ``python -m tools.emulator --opt DIR --task-root DIR ...`` runs a function with
its extensions for a few invocations and prints the timings as JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from tools.emulator.base import INIT_TYPES
from tools.emulator.emulator import Emulator
from tools.emulator.state import EmulatorError



def _parse_kv(items: Optional[List[str]], parser: argparse.ArgumentParser, flag: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error("%s expects KEY=VALUE, got %r" % (flag, item))
        out[key] = value
    return out


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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.emulator",
        description="Run a Lambda function with its extensions in a local emulated sandbox and print timings.",
    )
    parser.add_argument("--opt", required=True, type=Path, help="directory standing in for /opt (extensions/ inside)")
    parser.add_argument("--task-root", required=True, type=Path, help="directory standing in for /var/task")
    parser.add_argument("--handler", default="app.handler")
    parser.add_argument("--invocations", type=int, default=3)
    parser.add_argument("--freeze-s", type=float, default=1.0, help="frozen time between invocations")
    parser.add_argument("--env", action="append", metavar="K=V", help="function environment (runtime and extensions)")
    parser.add_argument("--runtime-env", action="append", metavar="K=V", help="extra environment of the runtime only")
    parser.add_argument("--no-telemetry", action="store_true", help="answer Telemetry API subscriptions with 202 NotSupported")
    parser.add_argument("--no-freeze", action="store_true", help="do not SIGSTOP the sandbox between invocations")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="function timeout")
    parser.add_argument("--memory-mb", type=int, default=128)
    parser.add_argument("--shutdown-window-ms", type=int, default=2000)
    parser.add_argument("--function-name", default="emulated-function")
    parser.add_argument("--exec-wrapper", default=None)
    parser.add_argument("--init-type", default="on-demand", choices=INIT_TYPES,
                        help="AWS_LAMBDA_INITIALIZATION_TYPE: snap-start restores a snapshot before the first "
                             "invocation; lambda-managed-instances runs --max-concurrency invocations at once")
    parser.add_argument("--max-concurrency", type=int, default=4, help="lambda-managed-instances: runtime workers")
    parser.add_argument("--payload", default="{}", help="JSON event for every invocation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (process output included) on stderr")
    args = parser.parse_args(argv)
    if args.invocations < 0:
        parser.error("--invocations must be >= 0")
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        parser.error("--payload is not JSON: %s" % exc)
    env = _parse_kv(args.env, parser, "--env")
    runtime_env = _parse_kv(args.runtime_env, parser, "--runtime-env")
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )

    summary: Dict[str, Any] = {"invocations": [], "shutdown": None}
    ok = True
    with Emulator(
        opt_dir=args.opt,
        runtime_cmd=None,
        task_root=args.task_root,
        handler=args.handler,
        env=env,
        runtime_env=runtime_env,
        function_name=args.function_name,
        timeout_s=args.timeout_s,
        memory_mb=args.memory_mb,
        freeze=not args.no_freeze,
        telemetry=not args.no_telemetry,
        shutdown_window_ms=args.shutdown_window_ms,
        exec_wrapper=args.exec_wrapper,
        init_type=args.init_type,
        max_concurrency=args.max_concurrency,
    ) as emu:
        try:
            emu.start()
            summary["init_ms"] = emu.last_init_ms
            for index in range(args.invocations):
                if index:
                    emu.wait_frozen_for(args.freeze_s)
                batch = (emu.invoke_concurrently([payload] * args.max_concurrency) if emu.managed
                         else [emu.invoke(payload)])
                ok = ok and all(res.status == "success" for res in batch)
                summary["invocations"].extend(batch)
            shutdown = emu.shutdown()
            summary["shutdown"] = shutdown
            ok = ok and not shutdown.killed and all(c == 0 for c in shutdown.exit_codes.values())
        except EmulatorError as exc:
            summary["error"] = str(exc)
            ok = False
        summary["extension_errors"] = emu.extension_errors
    summary["ok"] = ok
    print(json.dumps(_jsonable(summary), indent=2))
    return 0 if ok else 1


