"""Soak run: the extension in the local Lambda emulator for minutes, under steady traffic, with the
sandbox frozen after every invocation (and for longer every few seconds) and periodic upstream
faults. Samples the extension's RSS, thread count and open file descriptors, and reports them with
the delivered/dropped totals. A tool, not a CI test (``tests/test_soak_smoke.py`` runs ``--quick``).

    python -m tools.soak                  # 10 minutes (the figures in tools/BENCHMARKS.md)
    python -m tools.soak --minutes 2      # shorter
    python -m tools.soak --quick          # ~15 s smoke run
    python -m tools.soak --json out.json  # also write the summary as JSON

Exit status 0 when every invocation ended before its deadline, the extension never crashed or
reset, and (for runs of 2 minutes or more) its RSS plateaued; 1 otherwise.

Only loopback traffic: the fake upstream and the emulator listen on 127.0.0.1. Every loop is
bounded by the run's duration; the emulator kills only the processes it started.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import procfs  # noqa: E402
from tools.emulator import Emulator, InvokeResult, ShutdownResult  # noqa: E402
from tools.fake_upstream import FakeUpstream, Recorded, Reply  # noqa: E402
from tools.sandbox import EXTENSION_NAME, SAMPLE_FUNCTION, function_env, local_dsn, make_opt  # noqa: E402
from tools.stats import percentile  # noqa: E402

# (name, reply the upstream gives to every request during the fault window)
FAULTS = (
    ("5xx storm", Reply(503)),
    ("resets", Reply(action="reset")),
    ("slow replies", Reply(delay_s=3.0)),
    ("cut responses", Reply(action="drop_mid_response")),
    ("500s", Reply(500)),
    ("dropped connections", Reply(action="drop")),
)
PLATEAU_SLACK_KIB = 2048  # RSS growth tolerated between the two halves of the steady state
MAX_INVOCATIONS = 1_000_000


def proc_status(pid: int) -> Dict[str, int]:
    """VmRSS (KiB), Threads and open fds of ``pid`` from /proc (empty if it is gone)."""
    fields = procfs.status_fields(pid, "VmRSS", "Threads")
    out = {name: fields[key] for name, key in (("rss_kib", "VmRSS"), ("threads", "Threads")) if key in fields}
    fds = procfs.fd_count(pid)
    if fds is not None:
        out["fds"] = fds
    return out


def _round(value: Optional[float]) -> Optional[float]:
    return round(value, 1) if value is not None else None


def parse_summary(log: str) -> Dict[str, Any]:
    """The extension's last ``summary:`` line as a dict (dicts for ``dropped``/``rejected``)."""
    lines = [line for line in log.splitlines() if "summary:" in line]
    if not lines:
        return {}
    out: Dict[str, Any] = {}
    for token in lines[-1].split("summary:", 1)[1].split():
        key, sep, value = token.partition("=")
        if not sep:
            continue
        if ":" in value or key in ("dropped", "rejected"):
            inner: Dict[str, int] = {}
            for pair in value.split(","):
                k, s, v = pair.partition(":")
                if s and v.isdigit():
                    inner[k] = int(v)
            out[key] = inner
        elif value.isdigit():
            out[key] = int(value)
        else:
            out[key] = value
    return out


class Tally:
    """Counts what the fake upstream accepted, without letting its request log grow."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.accepted = 0
        self.event_ids: set = set()
        self.transactions = 0

    def __call__(self, rec: Recorded) -> None:
        with self.lock:
            self.requests += 1
            if rec.status != 200 or rec.action != "respond" or rec.envelope is None:
                return
            self.accepted += 1
            for header, payload in rec.envelope.items:
                kind = header.get("type")
                if kind not in ("event", "transaction"):
                    continue
                try:
                    event_id = json.loads(payload).get("event_id")
                except (ValueError, AttributeError):
                    event_id = None
                if kind == "event" and isinstance(event_id, str):
                    self.event_ids.add(event_id)
                elif kind == "transaction":
                    self.transactions += 1


def rss_verdict(samples: List[Dict[str, float]], duration_s: float) -> Dict[str, Any]:
    """Plateau check on the steady state (after a warm-up of 20% of the run, at most 60 s):
    the max RSS of its second half may exceed that of its first half by PLATEAU_SLACK_KIB."""
    warm = min(60.0, duration_s * 0.2)
    steady = [s for s in samples if s["t"] >= warm and "rss_kib" in s]
    if len(steady) < 4:
        return {"plateau": None, "why": "too few samples"}
    half = len(steady) // 2
    first = max(s["rss_kib"] for s in steady[:half])
    second = max(s["rss_kib"] for s in steady[half:])
    xs = [s["t"] for s in steady]
    ys = [s["rss_kib"] for s in steady]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs) or 1.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 60.0
    return {"plateau": second - first <= PLATEAU_SLACK_KIB, "first_half_max_kib": first,
            "second_half_max_kib": second, "growth_kib": second - first,
            "slope_kib_per_min": round(slope, 1), "warmup_s": round(warm, 1)}


class FaultSchedule:
    """The upstream's faults in turn (FAULTS): one every ``every_s`` seconds, lasting ``len_s``."""

    def __init__(self, upstream: FakeUpstream, t0: float, every_s: float, len_s: float) -> None:
        self.upstream = upstream
        self.t0 = t0
        self.every_s = every_s
        self.len_s = len_s
        self.next_fault = t0 + every_s
        self.until = 0.0
        self.faults: List[Dict[str, Any]] = []

    def tick(self, now: float) -> None:
        if self.until and now >= self.until:
            self.upstream.default = Reply()
            self.until = 0.0
        if now >= self.next_fault:
            name, reply = FAULTS[len(self.faults) % len(FAULTS)]
            self.upstream.default = reply
            self.until = now + self.len_s
            self.next_fault = now + self.every_s
            self.faults.append({"t": round(now - self.t0, 1), "fault": name})

    def end(self) -> None:
        self.upstream.default = Reply()


class Observed:
    """What the run saw: each invocation's outcome and samples of the extension process."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.samples: List[Dict[str, float]] = []
        self.post_ms: List[float] = []
        self.bad: List[str] = []
        self.captured: set = set()
        self.invocations = 0
        self.resets = 0
        self.pids: set = set()

    def sample(self, emu: Emulator, now: float) -> Optional[Dict[str, float]]:
        pid = emu.pids.get(EXTENSION_NAME)
        if not pid:
            return None
        self.pids.add(pid)
        sample: Dict[str, float] = {"t": round(now - self.t0, 1)}
        sample.update(proc_status(pid))
        self.samples.append(sample)
        return sample

    def record(self, result: InvokeResult) -> None:
        self.invocations += 1
        if result.reset or result.status != "success":
            self.resets += int(result.reset)
            self.bad.append("invocation %d: %s %s" % (self.invocations, result.status, result.error_type))
        if not result.extensions_before_deadline.get(EXTENSION_NAME, False):
            self.bad.append("invocation %d: extension missed the deadline" % self.invocations)
        if result.post_runtime_ms is not None:
            self.post_ms.append(result.post_runtime_ms)
        try:
            self.captured.update(json.loads(result.response or b"{}").get("event_ids", []))
        except ValueError:
            pass


def drive(emu: Emulator, obs: Observed, faults: FaultSchedule, tally: Tally, duration: float, rate: float,
          messages: int, long_freeze_every_s: float, long_freeze_s: float, sample_s: float, verbose: bool) -> None:
    """Invoke at ``rate`` until ``duration`` is over, frozen in between (longer every so often)."""
    end = obs.t0 + duration
    next_invoke = time.monotonic()
    next_sample = obs.t0
    next_long_freeze = obs.t0 + long_freeze_every_s
    for _ in range(MAX_INVOCATIONS):
        now = time.monotonic()
        if now >= end:
            break
        faults.tick(now)
        if now >= next_sample:
            sample = obs.sample(emu, now)
            if sample is not None and verbose:
                print("soak t=%6.1fs rss=%s KiB threads=%s fds=%s invocations=%d accepted=%d" % (
                    sample["t"], sample.get("rss_kib"), sample.get("threads"), sample.get("fds"),
                    obs.invocations, tally.accepted), flush=True)
            next_sample = now + sample_s
        obs.record(emu.invoke({"messages": messages}))
        next_invoke += 1.0 / rate
        pause = max(0.0, next_invoke - time.monotonic())
        if time.monotonic() >= next_long_freeze:
            pause = max(pause, long_freeze_s)
            next_long_freeze = time.monotonic() + long_freeze_every_s
            next_invoke = time.monotonic() + pause
        emu.wait_frozen_for(min(pause, max(0.0, end - time.monotonic())))
    faults.end()


def run(minutes: float, rate: float, messages: int, fault_every_s: float, fault_len_s: float,
        long_freeze_every_s: float, long_freeze_s: float, sample_s: float,
        verbose: bool = False) -> Dict[str, Any]:
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="sentry-ext-soak-") as tmp, FakeUpstream() as upstream:
        base = Path(tmp)
        upstream.on_record = tally
        upstream.idle_close_s = max(0.5, long_freeze_s / 2)  # pooled connections go stale in long freezes
        env = function_env(upstream.dsn(), base / "spool", SENTRY_EXT_FLUSH_TIMEOUT_MS="2000")
        rt_env = {"SENTRY_DSN": local_dsn(upstream.dsn(), env["SENTRY_EXT_PORT"])}
        emu = Emulator(make_opt(base), task_root=SAMPLE_FUNCTION, env=env, runtime_env=rt_env,
                       function_name="soak-function", timeout_s=10.0)
        with emu:
            t0 = time.monotonic()
            emu.start()
            obs = Observed(t0)
            faults = FaultSchedule(upstream, t0, fault_every_s, fault_len_s)
            drive(emu, obs, faults, tally, minutes * 60.0, rate, messages, long_freeze_every_s, long_freeze_s,
                  sample_s, verbose)
            obs.sample(emu, time.monotonic())  # the final sample
            shutdown = emu.shutdown()
            elapsed = time.monotonic() - t0
            log = emu.output(EXTENSION_NAME)
    return build_report(obs, faults.faults, tally, shutdown, elapsed, log, minutes)


def build_report(obs: Observed, faults: List[Dict[str, Any]], tally: Tally, shutdown: ShutdownResult,
                 elapsed: float, log: str, minutes: float) -> Dict[str, Any]:
    summary = parse_summary(log)
    samples = obs.samples
    rss = [s["rss_kib"] for s in samples if "rss_kib" in s]
    threads = [s["threads"] for s in samples if "threads" in s]
    fds = [s["fds"] for s in samples if "fds" in s]
    verdict = rss_verdict(samples, elapsed)
    dropped = summary.get("dropped", {}) if isinstance(summary.get("dropped"), dict) else {}
    report = {
        "duration_s": round(elapsed, 1),
        "invocations": obs.invocations,
        "failed_or_late": obs.bad[:20],
        "failed_or_late_count": len(obs.bad),
        "sandbox_resets": obs.resets,
        "extension_processes": len(obs.pids),
        "shutdown_exit_code": shutdown.exit_codes.get(EXTENSION_NAME),
        "shutdown_killed": bool(shutdown.killed),
        "post_runtime_ms_p50": _round(percentile(obs.post_ms, 50)),
        "post_runtime_ms_p99": _round(percentile(obs.post_ms, 99)),
        "post_runtime_ms_max": _round(percentile(obs.post_ms, 100)),
        "rss_kib": {"min": min(rss), "max": max(rss), "last": rss[-1], "first": rss[0]} if rss else {},
        "threads": {"min": min(threads), "max": max(threads), "last": threads[-1]} if threads else {},
        "fds": {"min": min(fds), "max": max(fds), "last": fds[-1]} if fds else {},
        "rss_verdict": verdict,
        "faults": len(faults),
        "fault_kinds": sorted({f["fault"] for f in faults}),
        "errors_captured": len(obs.captured),
        "errors_delivered": len(obs.captured & tally.event_ids),
        "errors_missing": len(obs.captured - tally.event_ids),
        "upstream_requests": tally.requests,
        "upstream_accepted": tally.accepted,
        "upstream_transactions": tally.transactions,
        "extension_summary": summary,
        "extension_dropped_total": sum(dropped.values()),
        "tracebacks_in_log": log.count("Traceback (most recent call last)"),
        "samples": samples,
    }
    ok = (not obs.bad and obs.resets == 0 and len(obs.pids) == 1 and report["shutdown_exit_code"] == 0
          and not report["shutdown_killed"] and bool(summary))
    if minutes >= 2:
        ok = ok and verdict.get("plateau") is True
    report["ok"] = ok
    return report


def timeline(samples: List[Dict[str, float]], points: int = 11) -> List[Dict[str, float]]:
    """About ``points`` samples evenly spread over the run (first and last included)."""
    with_rss = [s for s in samples if "rss_kib" in s]
    if len(with_rss) <= points:
        return with_rss
    step = (len(with_rss) - 1) / (points - 1)
    return [with_rss[round(i * step)] for i in range(points)]


def format_report(report: Dict[str, Any], command: str) -> str:
    """The human-readable summary (also what tools/BENCHMARKS.md quotes)."""
    rss, thr, fds = report["rss_kib"], report["threads"], report["fds"]
    verdict = report["rss_verdict"]
    summ = report["extension_summary"]
    lines = [
        "command: %s" % command,
        "duration: %.0f s, invocations: %d (failed or late: %d, sandbox resets: %d), upstream faults: %d (%s)" % (
            report["duration_s"], report["invocations"], report["failed_or_late_count"],
            report["sandbox_resets"], report["faults"], ", ".join(report["fault_kinds"])),
        "post-runtime ms: p50 %s, p99 %s, max %s" % (report["post_runtime_ms_p50"], report["post_runtime_ms_p99"],
                                                   report["post_runtime_ms_max"]),
        "RSS KiB: first %s, min %s, max %s, last %s; steady-state halves max %s -> %s (growth %s KiB, slope %s KiB/min): %s" % (
            rss.get("first"), rss.get("min"), rss.get("max"), rss.get("last"), verdict.get("first_half_max_kib"),
            verdict.get("second_half_max_kib"), verdict.get("growth_kib"), verdict.get("slope_kib_per_min"),
            {True: "plateau", False: "GROWING", None: "n/a"}[verdict.get("plateau")]),
        "RSS over time: %s" % ", ".join("%ds %d KiB" % (s["t"], s["rss_kib"]) for s in timeline(report["samples"])),
        "threads: min %s, max %s, last %s; open fds: min %s, max %s, last %s" % (
            thr.get("min"), thr.get("max"), thr.get("last"), fds.get("min"), fds.get("max"), fds.get("last")),
        "function errors captured %d, delivered %d, missing %d; upstream requests %d, accepted %d" % (
            report["errors_captured"], report["errors_delivered"], report["errors_missing"],
            report["upstream_requests"], report["upstream_accepted"]),
        "extension: received %s, forwarded %s, retried %s, dropped %s, tracebacks in log %d" % (
            summ.get("received"), summ.get("forwarded"), summ.get("retried"),
            json.dumps(summ.get("dropped", {}), sort_keys=True), report["tracebacks_in_log"]),
        "result: %s" % ("OK" if report["ok"] else "FAIL"),
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="run length (default 10)")
    parser.add_argument("--quick", action="store_true", help="a ~15 s smoke run with faults every 4 s")
    parser.add_argument("--rate", type=float, default=4.0, help="invocations per second (default 4)")
    parser.add_argument("--messages", type=int, default=1, help="extra capture_message calls per invocation")
    parser.add_argument("--fault-every", type=float, default=30.0, help="seconds between upstream faults")
    parser.add_argument("--fault-len", type=float, default=4.0, help="seconds each upstream fault lasts")
    parser.add_argument("--long-freeze-every", type=float, default=5.0, help="seconds between long freezes")
    parser.add_argument("--long-freeze", type=float, default=2.0, help="length of a long freeze (s)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--json", type=Path, help="also write the full report (with samples) here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every sample as it is taken")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.minutes, opts.fault_every, opts.fault_len, opts.sample = 0.25, 4.0, 1.5, 1.0
        opts.long_freeze_every, opts.long_freeze = 4.0, 1.0
    if not 0 < opts.minutes <= 120 or not 0 < opts.rate <= 50:
        parser.error("--minutes must be in (0, 120] and --rate in (0, 50]")
    command = "python -m tools.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    report = run(opts.minutes, opts.rate, max(0, opts.messages), opts.fault_every, opts.fault_len,
                 opts.long_freeze_every, opts.long_freeze, opts.sample, opts.verbose)
    print(format_report(report, command.strip()))
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2, sort_keys=True))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
