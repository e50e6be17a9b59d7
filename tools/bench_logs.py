"""Micro-benchmark of function logs: CPU per log line from a Telemetry batch to envelope bytes.

    .venv/bin/python tools/bench_logs.py [--lines 1000] [--rounds 30]

One round: ``json.loads`` of a Telemetry POST body with ``--lines`` mixed ``function`` events
(Python and Node text records, tracebacks, plain prints, JSON-format objects and a JSON string
from a structured-logging library), ``parse`` and ``LogBatch.add`` of each, then ``take`` in
chunks of 100 and ``log_envelope`` (the gzip'd envelope bytes, as the extension sends them). The figure is the median
round's process CPU time divided by the lines; in-process, no HTTP (what the listener and the
flush add per line on top of the Telemetry request they already handle). Also reported: the
Python memory a default ``LogBatch`` holds with those lines, and the peak while serializing.

    .venv/bin/python tools/bench_logs.py --e2e [--lines 1000] [--invocations 20]

End to end (``bench_function_logs``): the real extension beside the sample function under
awslambdaric in the emulator (``end`` mode, real freezes), each invocation printing ``--lines``
lines, run once with ``SENTRY_EXT_LOGS=off`` and once with ``on``. Per log line: the extension
process's extra CPU time (``/proc``: the listener's HTTP and JSON, parsing, batching, envelopes,
sending), summed over the invocations and divided by the lines; the added post-runtime time
(median, on minus off); the extra peak RSS (VmHWM at the end, on minus off); and the logs that
arrived upstream (all of them, or the figure is void).

    .venv/bin/python tools/bench_logs.py --e2e --runs 5 --baseline main

``--runs N`` repeats the end-to-end measurement; ``--baseline REV`` also measures that git
revision of the extension (``git archive``) in every run, alternating which goes first, so a
change is compared with its baseline under the same machine load (peak RSS varies run to run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make ``sentry_ext`` and ``tools`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sentry_ext.insight.function_logs import parse  # noqa: E402
from sentry_ext.insight.log_batch import LogBatch, LogContext, log_envelope  # noqa: E402
from tools.stats import median  # noqa: E402

TARGET_US = 20.0  # issue 12: CPU per log line
TARGET_RSS_MIB = 2.0  # issue 12: extra RSS with function logs on
REQ = "8f5b1c9e-4e0b-4f6b-9d55-0a1b2c3d4e5f"
TRACE = "771a43a4192642f0b136d5159a501700"
TRACEBACK = ("failed\nTraceback (most recent call last):\n  File \"/var/task/app.py\", line 12, in handler\n"
             "    charge(order)\n  File \"/var/task/pay.py\", line 40, in charge\n    raise ValueError(\"card declined\")\n"
             "ValueError: card declined\n")


def sample_records() -> List[Any]:
    """Ten records in the proportions a chatty function prints them."""
    t = "2026-11-28T06:32:55.%03dZ"
    return [
        "[INFO]\t%s\t%s\tprocessing order 1234 for customer 42\n" % (t % 1, REQ),
        "[INFO]\t%s\t%s\tfetched 17 items from the cart in 12.5 ms\n" % (t % 2, REQ),
        "[WARNING]\t%s\t%s\tretrying the payment gateway (attempt 2 of 3)\n" % (t % 3, REQ),
        "[ERROR]\t%s\t%s\t%s" % (t % 4, REQ, TRACEBACK),
        "%s\t%s\tINFO\tnode says hello {\"a\":1}\n" % (t % 5, REQ),
        "plain print line from the handler\n",
        "another print: value=42 ok=True\n",
        {"timestamp": "2026-11-28T06:32:55Z", "level": "INFO", "message": "json format record", "logger": "root",
         "requestId": REQ},
        {"timestamp": "2026-11-28T06:32:55Z", "level": "ERROR", "message": "json error", "logger": "app",
         "requestId": REQ, "errorType": "ValueError", "errorMessage": "card declined",
         "stackTrace": ["  File \"/var/task/app.py\", line 12, in handler\n    charge(order)\n"], "order_id": 1234},
        json.dumps({"level": "INFO", "location": "handler:10", "message": "powertools line", "service": "pay",
                    "timestamp": "2026-11-28 06:32:55,494+0000", "cold_start": False, "function_request_id": REQ}),
    ]


def telemetry_body(lines: int) -> bytes:
    records = sample_records()
    events = [{"time": "2026-11-28T06:32:55.%03dZ" % (i % 1000), "type": "function", "record": records[i % len(records)]}
              for i in range(lines)]
    return json.dumps(events).encode()


def one_round(body: bytes, context: LogContext, min_level: str = "info") -> Dict[str, int]:
    """Everything done per line, once; returns counts (for the sanity check)."""
    batch = LogBatch(max_items=len(body))
    parsed = 0
    for event in json.loads(body):
        line = parse(event.get("record"), event.get("time"), min_level)
        if line is not None:
            batch.add(line)
            parsed += 1
    out = 0
    while True:
        lines = batch.take(100)
        if not lines:
            break
        out += len(log_envelope(lines, context, lambda _rid: TRACE, {"sent_at": "2026-11-28T06:32:56.000Z"}))
    return {"parsed": parsed, "bytes": out}


def held_kib(body: bytes) -> Dict[str, float]:
    """Python memory held by a default LogBatch full of the parsed lines, and the peak while
    serializing them (tracemalloc: allocations, not RSS)."""
    events = json.loads(body)
    context = LogContext("checkout", "$LATEST", "eu-west-1", "checkout@1.2.3", "production")
    tracemalloc.start()
    try:
        batch = LogBatch()
        for event in events:
            line = parse(event.get("record"), event.get("time"))
            if line is not None:
                batch.add(line)
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        while True:
            taken = batch.take(100)
            if not taken:
                break
            log_envelope(taken, context, lambda _rid: TRACE, {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {"batch_held_kib": held / 1024.0, "serialize_peak_kib": peak / 1024.0}


def bench_log_lines(lines: int = 1000, rounds: int = 30) -> Dict[str, Any]:
    """CPU µs per log line (median round), with the envelope bytes made and the memory held."""
    body = telemetry_body(lines)
    context = LogContext("checkout", "$LATEST", "eu-west-1", "checkout@1.2.3", "production")
    counts = one_round(body, context)  # warm-up (imports, caches)
    samples = []
    for _ in range(max(1, rounds)):
        started = time.process_time()
        one_round(body, context)
        samples.append((time.process_time() - started) * 1e6 / lines)
    result: Dict[str, Any] = {"lines": lines, "rounds": rounds, "parsed": counts["parsed"],
                              "envelope_bytes": counts["bytes"], "cpu_per_log_line_us": median(samples),
                              "cpu_per_log_line_min_us": min(samples)}
    result.update(held_kib(body))
    return result


def _emulated_run(opt: Path, tmp: Path, logs: str, lines: int, invocations: int, freeze_s: float) -> Dict[str, Any]:
    """``invocations`` invocations printing ``lines`` lines each, with SENTRY_EXT_LOGS=``logs``."""
    from tools.emulator import Emulator
    from tools.fake_upstream import FakeUpstream
    from tools.procfs import cpu_ms, status_kib
    from tools.sandbox import EXTENSION_NAME, SAMPLE_FUNCTION, function_env, local_dsn

    with FakeUpstream() as upstream:
        env = function_env(upstream.dsn(), tmp / ("spool-" + logs), SENTRY_EXT_LOGS=logs, SENTRY_EXT_FLUSH="end")
        runtime_env = {"SENTRY_DSN": local_dsn(upstream.dsn(), env["SENTRY_EXT_PORT"])}
        cpu: List[float] = []
        post: List[float] = []
        with Emulator(opt, task_root=SAMPLE_FUNCTION, env=env, runtime_env=runtime_env, function_name="bench-logs",
                      memory_mb=1024) as emu:
            emu.start()
            pid = emu.pids[EXTENSION_NAME]
            for _ in range(invocations):
                before = cpu_ms(pid)
                result = emu.invoke({"lines": lines, "capture": False})
                emu.wait_frozen_for(freeze_s)  # frozen: the extension's work for this invocation is done
                after = cpu_ms(pid)
                if result.status != "success" or before is None or after is None:
                    raise RuntimeError("invocation failed: %s\n%s" % (result.status, emu.output(EXTENSION_NAME)[-2000:]))
                cpu.append(after - before)
                if result.post_runtime_ms is not None:
                    post.append(result.post_runtime_ms)
            hwm_kib = status_kib(pid, "VmHWM")
            emu.shutdown()
            summary = [line for line in emu.output(EXTENSION_NAME).splitlines() if "summary:" in line]
        arrived = len(upstream.logs())
    return {"logs": logs, "cpu_ms_total": sum(cpu), "post_runtime_median_ms": median(post),
            "peak_rss_mib": (hwm_kib or 0) / 1024.0, "logs_arrived": arrived,
            "summary": summary[-1].split("summary:", 1)[1].strip() if summary else None}


def _warm_bytecode(opt: Path) -> None:
    """Compile the measured tree's ``sentry_ext`` first: an extension that compiles its modules
    at start peaks ~1.8 MiB higher, which would land on whichever of off/on ran first."""
    import compileall
    import os

    from tools.sandbox import EXTENSION_NAME

    tree = Path(os.path.realpath(opt / "extensions" / EXTENSION_NAME)).parent.parent
    compileall.compile_dir(str(tree / "sentry_ext"), quiet=1)


def bench_function_logs(lines: int = 1000, invocations: int = 20, opt: Optional[Path] = None,
                        freeze_s: float = 0.1) -> Dict[str, Any]:
    """End to end in the emulator: CPU per log line, added post-runtime time and extra peak RSS
    of SENTRY_EXT_LOGS=on against off, each invocation printing ``lines`` lines."""
    from tools.sandbox import make_opt

    with tempfile.TemporaryDirectory(prefix="sentry-ext-bench-logs-") as name:
        tmp = Path(name)
        opt = opt or make_opt(tmp)
        _warm_bytecode(opt)
        off = _emulated_run(opt, tmp, "off", lines, invocations, freeze_s)
        on = _emulated_run(opt, tmp, "on", lines, invocations, freeze_s)
    total = lines * invocations
    complete = on["logs_arrived"] == total
    return {
        "lines_per_invocation": lines, "invocations": invocations, "off": off, "on": on,
        "all_logs_arrived": complete,
        "cpu_per_log_line_e2e_us": (on["cpu_ms_total"] - off["cpu_ms_total"]) * 1000.0 / total if complete else None,
        "log_post_runtime_extra_ms": (on["post_runtime_median_ms"] - off["post_runtime_median_ms"]
                                      if on["post_runtime_median_ms"] is not None
                                      and off["post_runtime_median_ms"] is not None else None),
        "log_rss_extra_mib": on["peak_rss_mib"] - off["peak_rss_mib"],
    }


def compare_runs(runs: int, lines: int, invocations: int, baseline: Optional[str]) -> List[Dict[str, Any]]:
    """``runs`` end-to-end measurements of this tree, each beside one of ``baseline`` (a git
    revision) when given, alternating which of the two goes first."""
    from tools.sandbox import make_opt

    results: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sentry-ext-bench-logs-trees-") as name:
        opts = {"this tree": make_opt(Path(name) / "this")}
        if baseline:
            from tools.bench_remote import baseline_opt

            opts["baseline " + baseline] = baseline_opt(Path(name) / "baseline", baseline)[0]
        for run in range(max(1, runs)):
            order = list(opts) if run % 2 == 0 else list(reversed(list(opts)))
            for tree in order:
                result = bench_function_logs(lines, invocations, opts[tree])
                result.update(run=run + 1, tree=tree)
                results.append(result)
                print(_e2e_line(result), file=sys.stderr, flush=True)
    return results


def _e2e_line(e2e: Dict[str, Any]) -> str:
    return "run %d, %s: CPU per log line %s µs, post-runtime +%s ms, peak RSS +%.2f MiB (on %.2f, off %.2f), " \
           "logs arrived %d of %d, upstream bytes %s" % (
               e2e["run"], e2e["tree"], _fmt(e2e["cpu_per_log_line_e2e_us"]), _fmt(e2e["log_post_runtime_extra_ms"]),
               e2e["log_rss_extra_mib"], e2e["on"]["peak_rss_mib"], e2e["off"]["peak_rss_mib"],
               e2e["on"]["logs_arrived"], e2e["lines_per_invocation"] * e2e["invocations"],
               _forwarded_bytes(e2e["on"]["summary"]))


def _forwarded_bytes(summary: Optional[str]) -> str:
    """``bytes_forwarded`` from the extension's summary line (what went upstream), or "-"."""
    for field in (summary or "").split():
        if field.startswith("bytes_forwarded="):
            return field.split("=", 1)[1]
    return "-"


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--e2e", action="store_true", help="end to end in the emulator (off against on)")
    parser.add_argument("--invocations", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1, help="end-to-end runs (with --e2e)")
    parser.add_argument("--baseline", default=None, help="with --e2e: also run this git revision, alternating")
    opts = parser.parse_args(argv)
    if opts.e2e and (opts.runs > 1 or opts.baseline):
        results = compare_runs(opts.runs, opts.lines, opts.invocations, opts.baseline)
        print("| run | tree | CPU per log line µs | post-runtime added ms | peak RSS added MiB | logs arrived | "
              "bytes upstream (on) |\n|---|---|---|---|---|---|---|")
        for e2e in results:
            print("| %d | %s | %s | %s | %+.2f | %d | %s |" % (
                e2e["run"], e2e["tree"], _fmt(e2e["cpu_per_log_line_e2e_us"]), _fmt(e2e["log_post_runtime_extra_ms"]),
                e2e["log_rss_extra_mib"], e2e["on"]["logs_arrived"], _forwarded_bytes(e2e["on"]["summary"])))
        print("%d invocations printing %d lines per run; %s" % (opts.invocations, opts.lines, sys.executable))
        return 0
    if opts.e2e:
        e2e = bench_function_logs(opts.lines, opts.invocations)
        print(json.dumps(e2e, indent=2))
        print("end to end, %d invocations printing %d lines: CPU per log line %s µs (target <= %.0f), post-runtime "
              "+%s ms, peak RSS +%.2f MiB (target <= %.0f), logs arrived %d of %d; %s" % (
                  opts.invocations, opts.lines, _fmt(e2e["cpu_per_log_line_e2e_us"]), TARGET_US,
                  _fmt(e2e["log_post_runtime_extra_ms"]), e2e["log_rss_extra_mib"], TARGET_RSS_MIB,
                  e2e["on"]["logs_arrived"], opts.lines * opts.invocations, sys.executable))
        return 0
    result = bench_log_lines(opts.lines, opts.rounds)
    print(json.dumps(result, indent=2))
    print("CPU per log line: %.1f µs median (min %.1f; target <= %.0f); batch of %d lines holds %.0f KiB, "
          "serializing peaks at %.0f KiB; %s" % (
              result["cpu_per_log_line_us"], result["cpu_per_log_line_min_us"], TARGET_US, result["parsed"],
              result["batch_held_kib"], result["serialize_peak_kib"], sys.executable))
    return 0


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else "%.1f" % value


if __name__ == "__main__":
    sys.exit(main())
