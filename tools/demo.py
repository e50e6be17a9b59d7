"""End-to-end demo: fake Sentry + Lambda emulator + this extension + a real sentry-sdk function.

``python3 tools/dev.py demo [--invocations N] [--freeze-s S] [--flush end|background|adaptive]
[--upstream-delay-ms MS] [--no-timeout]`` prints what reached the fake upstream and the
per-invocation timings. The last invocation (of two or more) runs past the function's timeout (unless
``--no-timeout``): the runtime is stopped, the sandbox reset, and the extension reports the
timeout, which the function's SDK cannot.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # ``python3 tools/demo.py``: make the ``tools`` package importable
    from pathlib import Path as _Path

    sys.path[0] = str(_Path(__file__).resolve().parent.parent)

import argparse
import collections
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from tools.emulator import Emulator
from tools.emulator.cli import HEADER, check_python, default_python, table_row
from tools.fake_upstream import FakeUpstream
from tools.sandbox import EXTENSION_NAME, SAMPLE_FUNCTION, function_env, local_dsn, make_opt
from tools.stats import median, percentile

TIMEOUT_S = 2.0  # the demo function's timeout


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invocations", type=int, default=5)
    parser.add_argument("--freeze-s", type=float, default=1.0, help="how long the sandbox stays frozen between invocations")
    parser.add_argument("--flush", default="end", choices=["end", "background", "adaptive"])
    parser.add_argument("--upstream-delay-ms", type=float, default=0.0, help="fake upstream reply delay")
    parser.add_argument("--python", default=None, metavar="PATH",
                        help="interpreter of the function's runtime and the extension; it needs awslambdaric, "
                             "sentry-sdk and urllib3 (default: this project's .venv/bin/python if it exists, "
                             "else the interpreter running the demo)")
    parser.add_argument("--no-timeout", action="store_true", help="do not end with an invocation that times out")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the extension's own log")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    python = opts.python or default_python()
    problem = check_python(python, ("awslambdaric", "sentry_sdk", "urllib3", "certifi"))
    if problem:
        print("error: " + problem, file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="sentry-ext-demo-") as tmp, FakeUpstream() as upstream:
        upstream.delay_s = opts.upstream_delay_ms / 1000.0
        env = function_env(upstream.dsn(), Path(tmp) / "spool", python, SENTRY_EXT_FLUSH=opts.flush)
        runtime_env = {"SENTRY_DSN": local_dsn(upstream.dsn(), env["SENTRY_EXT_PORT"])}
        print("fake Sentry upstream on %s; extension on 127.0.0.1:%s (flush=%s)"
              % (upstream.base_url, env["SENTRY_EXT_PORT"], opts.flush))
        with Emulator(make_opt(Path(tmp)), [python, "-m", "awslambdaric", "app.handler"], task_root=SAMPLE_FUNCTION,
                      env=env, runtime_env=runtime_env, function_name="sentry-ext-demo", timeout_s=TIMEOUT_S) as emu:
            emu.start()
            captured: List[str] = []
            print("\n" + HEADER)
            # the last of at least two: a run of one still shows an event delivered
            timeout_at = opts.invocations if opts.invocations >= 2 and not opts.no_timeout else 0
            for index in range(opts.invocations):
                payload = {"messages": 1}
                if index + 1 == timeout_at:
                    payload["sleep_s"] = TIMEOUT_S + 1  # past the function's timeout
                result = emu.invoke(payload)
                body = result.response or b"{}"
                captured.extend(json.loads(body).get("event_ids", []))
                print(table_row(index + 1, result, upstream))
                if index + 1 < opts.invocations:
                    emu.wait_frozen_for(opts.freeze_s)
            last = emu.invocations[-1] if emu.invocations else None
            # A timeout resets the sandbox: its SHUTDOWN (reason timeout) is the one to show.
            shutdown = last.shutdown if last is not None and last.shutdown is not None else emu.shutdown()
            log_text = emu.output(EXTENSION_NAME)

        post = [r.post_runtime_ms for r in emu.invocations if r.post_runtime_ms is not None]
        types = collections.Counter(t for r in upstream.requests if r.envelope for t in r.envelope.item_types)
        arrived = set(upstream.event_ids("event"))
        print("\nshutdown (%s): exit code %s after %.0f ms (deadline window 2000 ms)%s"
              % (shutdown.reason, shutdown.exit_codes.get(EXTENSION_NAME), shutdown.exit_ms.get(EXTENSION_NAME) or -1,
                 ", SIGKILLed" if shutdown.killed else ""))
        print("upstream received %d request(s); items by type: %s"
              % (len(upstream.requests), ", ".join("%s=%d" % kv for kv in sorted(types.items())) or "none"))
        print("events captured by the function: %d, arrived upstream: %d"
              % (len(captured), len(arrived & set(captured))))
        if post:
            print("post-runtime extension time: median %.1f ms, p95 %.1f ms, max %.1f ms"
                  % (median(post), percentile(post, 95), max(post)))
        summary = [line for line in log_text.splitlines() if "summary:" in line]
        if summary:
            print("extension: " + summary[-1].split("] ", 1)[-1])
        if opts.verbose:
            print("\n--- extension log ---\n" + log_text)
        ok = bool(captured) and set(captured) <= arrived and not shutdown.killed
        verdict = "every captured event reached the upstream" if ok else "SOMETHING WAS LOST"
        if timeout_at:
            timed_out = emu.invocations[timeout_at - 1]
            reported = _extension_events(upstream, timed_out.request_id)
            for event in reported:
                exc = event["exception"]["values"][0]
                print("invocation %d (%s) %s: the extension reported %s: %s"
                      % (timeout_at, timed_out.request_id, timed_out.status, exc["type"], exc["value"]))
            timeout_ok = timed_out.status == "timeout" and len(reported) == 1
            ok = ok and timeout_ok
            verdict += (", and the timeout was reported once" if timeout_ok
                        else "; the TIMEOUT WAS NOT REPORTED exactly once (%d events)" % len(reported))
        print("\nRESULT: %s" % verdict)
        return 0 if ok else 1


def _extension_events(upstream: FakeUpstream, request_id: str) -> List[Dict[str, Any]]:
    """Events the extension made about ``request_id`` (its SDK name and the request id tag)."""
    events = []
    for _, _, payload in upstream.items("event"):
        event = json.loads(payload)
        if (event.get("sdk", {}).get("name") == "sentry.lambda.extension"
                and event.get("tags", {}).get("aws_lambda.request_id") == request_id):
            events.append(event)
    return events


if __name__ == "__main__":
    sys.exit(main())
