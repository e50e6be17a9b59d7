"""What Sentry costs a 128 MB function, measured the way Lambda bills it (issue 15).

    .venv/bin/python tools/bench_cost.py [--peer node] [--rounds N] [--quick] [--profile] [--out FILE]
    (or: .venv/bin/python tools/bench.py --cost [same options])

Two suites, every contender interleaved round by round in one run:

- **128 MB**: the emulated sandbox's processes (runtime and extensions, launched by
  ``tools/emulator``) run in a CPU-quota cgroup of 128/1769 of one CPU with a short period (1.447 ms
  per 20 ms, ``tools/cgroup_cpu.py``); without the rights to make one the suite prints ``SKIPPING``
  and why. The upstream (``tools/fake_upstream.py``) is HTTPS with a self-signed certificate
  (trusted through ``SSL_CERT_FILE``, or ``NODE_EXTRA_CA_CERTS`` for Node), answers after 80 ms, and
  closes connections idle for 0.3 s, so the 0.5 s freeze between invocations outlasts it (as a load
  balancer closes connections idle for long). 20 invocations of the sample function (real
  ``sentry-sdk``: a message, an error and a transaction each) with freezes; p50/p95 of function
  duration, post-runtime, billed duration (their sum rounded up to 1 ms) and Init duration, and
  TLS handshakes (and resumed sessions) per invocation, for: the SDK sending straight to the
  upstream (no extension: the baseline), ours in ``end``, ``background`` and ``adaptive``, and
  Sentry's Node extension with the tunnel function (3 envelopes per invocation).
- **CPU per invocation** on whole cores (no quota), same upstream, in two cases side by side in
  one run: the upstream **keeps** idle connections (a load balancer's long keep-alive) and it
  **closes** them during every freeze (``--idle-close``). The extension process is counted by
  ``perf stat`` (all its threads, those started later included) over thawed invocations
  6-25: CPU (task-clock, ns), wake-ups (context switches) and system calls per invocation. Without
  ``perf`` the CPU comes from /proc (clock ticks: (CPU after 25 − after 5) / 20) and the wake-ups
  from the threads' ``*_ctxt_switches`` (threads that exited are missed); no syscall count.
  ``--profile`` adds a py-spy profile (if installed) of our extension across invocations 2-25.

Besides handshakes per invocation (counted from INVOKE to the end of its freeze), both suites
report every handshake, the SHUTDOWN drain's included, per request the upstream accepted, and how
many envelopes were still queued when the last invocation ended ("left for SHUTDOWN"): a rule that
opens fewer connections by letting a backlog grow shows up there. ``--ours-env`` runs ours with
extra settings, e.g. ``SENTRY_EXT_SENDERS=1 SENTRY_EXT_MAX_INFLIGHT=1`` (one connection): how many
requests one connection delivers per thawed invocation.
``--floor-relay`` adds ``tools/floor_relay.py`` to the CPU suite: the least a stdlib Python relay
of our shape pays per invocation for the same I/O, so ours minus it is our own per-event work.
``--baseline REV`` adds ours at that git revision (``git archive``, in ``adaptive``) to both
suites, and in ``end`` to the 128 MB one, interleaved with this tree: before and after in one run.

``--quick`` (the test suite's smoke run): 3 invocations, the baseline and ours in ``adaptive``.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make ``tools`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench_remote import baseline_opt  # noqa: E402
from tools.bench_support import (PEER_NAME, PEER_PORT, command_line, loadavg, machine, opt_floor,  # noqa: E402
                                 peer_opt, save_results, say)
from tools.cgroup_cpu import CpuQuota, lambda_quota_us  # noqa: E402
from tools.emulator import Emulator  # noqa: E402
from tools.fake_upstream import FakeUpstream  # noqa: E402
from tools.procfs import cpu_ms, status_kib  # noqa: E402
from tools.sandbox import EXTENSION_NAME, SAMPLE_FUNCTION, free_port, function_env, local_dsn, make_opt  # noqa: E402
from tools.stats import percentile  # noqa: E402
from tools.tlsutil import self_signed, server_context  # noqa: E402

MEMORY_MB = 128
PERIOD_US = 20000
DELAY_S = 0.08
IDLE_CLOSE_S = 0.3
FREEZE_S = 0.5
CPU_WARM = 5          # invocations before the counted window (the first burst, `adaptive` judging)
CPU_COUNTED = 20      # thawed invocations counted
CASES = ("kept", "closed")  # the CPU suite's two upstreams: idle connections kept / closed in the freeze
FIGURES = ("function_ms", "post_runtime_ms", "billed_ms")
CPU_KEPT = ("left_for_shutdown", "delivered", "expected")  # from the CPU suite's runs
COUNTERS = ("task-clock", "context-switches", "raw_syscalls:sys_enter")

#: (figure, comparison, bound, against): the issue's targets, as ratios to a contender of the same run.
TARGETS = {
    "cpu_per_invocation_kept": ("<=", 0.4, "peer"),     # ours (adaptive) / Node extension, whole cores
    "cpu_per_invocation_closed": ("<=", 0.4, "peer"),   # same, upstream closing idle connections in the freeze
    "billed_p50": ("<=", 0.6, "sdk"),                   # ours adaptive / SDK straight to the upstream, 128 MB
    "function_p50": ("<=", 0.55, "peer"),               # ours adaptive / Node extension, 128 MB
    "billed_p50_end_vs_before": ("<=", 1.0, "baseline-end"),  # no worse than the --baseline revision
    "billed_p50_adaptive_vs_before": ("<=", 1.0, "baseline"),
}


class Contender:
    """One setup: ``kind`` ours (with a flush ``mode`` and ``extra_env``), sdk (no extension) or peer (Node)."""

    def __init__(self, key: str, label: str, kind: str, opt: Path, exe: Optional[str], mode: str = "",
                 extra_env: Optional[Dict[str, str]] = None) -> None:
        self.key, self.label, self.kind, self.opt, self.exe, self.mode = key, label, kind, opt, exe, mode
        self.extra_env = extra_env or {}

    @property
    def handler(self) -> str:
        return "tunnel_app.handler" if self.kind == "peer" else "app.handler"

    @property
    def payload(self) -> Dict[str, Any]:
        # The sample function sends a message, an error and (AwsLambdaIntegration) a transaction;
        # the tunnel function posts as many envelopes for the Node extension.
        return {"envelopes": 3} if self.kind == "peer" else {"messages": 1}


def floor_relay(tmp: Path) -> Contender:
    """``tools/floor_relay.py`` installed under ``tmp``, as the CPU suite runs it (``--floor-relay``)."""
    return Contender("floor-relay", "floor: `tools/floor_relay.py` (the I/O alone, stdlib, `python -IS`)", "relay",
                     opt_floor(tmp / "relay", sys.executable, "floor_relay.py", "floor-relay"), "floor-relay")


def _env(contender: Contender, dsn: str, cert: Path, spool: Path) -> Dict[str, Dict[str, str]]:
    if contender.kind == "floor":  # the SDK's own work: its posts find a closed local port at once
        return {"env": {}, "runtime_env": {"SENTRY_DSN": local_dsn(dsn, str(free_port()))}}
    if contender.kind == "sdk":
        return {"env": {}, "runtime_env": {"SENTRY_DSN": dsn, "SSL_CERT_FILE": str(cert)}}
    if contender.kind == "peer":
        return {"env": {"SENTRY_DSN": dsn, "NODE_EXTRA_CA_CERTS": str(cert)},
                "runtime_env": {"SENTRY_TUNNEL_URL": "http://127.0.0.1:%d/envelope" % PEER_PORT, "SENTRY_DSN": dsn}}
    if contender.kind == "relay":  # tools/floor_relay.py: the ports and upstream settings it reads, no more
        env = function_env(dsn, spool, SSL_CERT_FILE=str(cert))
        return {"env": env, "runtime_env": {"SENTRY_DSN": local_dsn(dsn, env["SENTRY_EXT_PORT"])}}
    env = function_env(dsn, spool, SENTRY_EXT_FLUSH=contender.mode, SSL_CERT_FILE=str(cert), **contender.extra_env)
    return {"env": env, "runtime_env": {"SENTRY_DSN": local_dsn(dsn, env["SENTRY_EXT_PORT"])}}


def run_sandbox(contender: Contender, tmp: Path, cert: Path, key: Path, invocations: int,
                quota: Optional[CpuQuota], profile: Optional[Path] = None,
                idle_close_s: Optional[float] = IDLE_CLOSE_S, count_from: Optional[int] = None,
                ca_file: Optional[Path] = None) -> Dict[str, Any]:
    """One sandbox: ``invocations`` invocations, each followed by a freeze; then SHUTDOWN. The
    extension trusts ``ca_file`` (default: the upstream's ``cert`` alone); each row has the
    extension's CPU so far, read during its freeze. With ``count_from``, the extension's CPU,
    wake-ups and syscalls over invocations ``count_from``+1 to the last (``counted``)."""
    spool = tmp / ("spool-%s-%d" % (contender.key, time.monotonic_ns()))
    rows: List[Dict[str, Any]] = []
    with FakeUpstream(delay_s=DELAY_S, idle_close_s=idle_close_s, tls=server_context(cert, key)) as upstream:
        envs = _env(contender, upstream.dsn(), ca_file or cert, spool)
        with Emulator(contender.opt, task_root=SAMPLE_FUNCTION, handler=contender.handler, env=envs["env"],
                      runtime_env=envs["runtime_env"], function_name="bench-cost", memory_mb=1024,
                      timeout_s=30.0, preexec=quota.join if quota else None) as emu:
            emu.start()
            init_ms = emu.last_init_ms
            pid = emu.pids.get(contender.exe) if contender.exe else None
            spy = None
            counter: Optional[Counter] = None
            for index in range(invocations):
                if pid and count_from is not None and index == count_from:
                    counter = Counter(pid, tmp / ("perf-%s-%d.csv" % (contender.key, time.monotonic_ns())))
                shakes, resumed = upstream.handshakes, upstream.resumed
                result = emu.invoke(contender.payload)
                emu.wait_frozen_for(FREEZE_S)
                row = {"status": result.status, "function_ms": result.runtime_ms,
                       "post_runtime_ms": result.post_runtime_ms, "init_ms": init_ms if index == 0 else None,
                       "handshakes": upstream.handshakes - shakes, "resumed": upstream.resumed - resumed}
                if result.runtime_ms is not None and result.post_runtime_ms is not None:
                    row["billed_ms"] = float(math.ceil(result.runtime_ms + result.post_runtime_ms))
                row["ext_cpu_ms"] = cpu_ms(pid) if pid else None  # frozen: nothing moves
                rows.append(row)
                if index == 0 and pid:
                    row["ext_rss_mib"] = (status_kib(pid, "VmRSS") or 0) / 1024.0
                    spy = _start_profile(pid, profile) if profile else None
            ext_cpu = cpu_ms(pid) if pid else None  # frozen now: nothing moves
            counted = counter.stop() if counter is not None else None
            runtime_pid = emu.pids.get("runtime")
            runtime_cpu = cpu_ms(runtime_pid) if runtime_pid else None
            if spy is not None:
                _stop_profile(spy)
            before_shutdown = _delivered(upstream.requests)
            emu.shutdown()
            handshakes = upstream.handshakes
            log = emu.output(contender.exe) if contender.exe else ""
            failed = [r for r in rows if r["status"] != "success"]
        requests = upstream.requests
        accepted = sum(1 for rec in requests if rec.envelope is not None and rec.status == 200)
        delivered = _delivered(requests)
    expected = 3 * invocations
    # handshakes_total and left_for_shutdown: what the per-invocation rows leave out. Requests still
    # queued after the last invocation go out in the SHUTDOWN drain, on connections of their own.
    return {"contender": contender.key, "invocations": invocations, "rows": rows, "ext_cpu_ms": ext_cpu,
            "counted": counted,
            "runtime_cpu_ms": runtime_cpu, "delivered": delivered, "expected": expected,
            "extra_requests": accepted - delivered, "handshakes_total": handshakes, "accepted_requests": accepted,
            "left_for_shutdown": delivered - before_shutdown,
            "failed": len(failed), "log_tail": log[-3000:] if failed or delivered < expected else ""}


class Counter:
    """The extension process's CPU, context switches and syscalls from now until ``stop``: ``perf
    stat`` on the process (every thread, later ones included), or /proc without perf."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        perf = shutil.which("perf")
        if perf is not None:
            self.proc = subprocess.Popen([perf, "stat", "-x", ",", "-e", ",".join(COUNTERS), "-p", str(pid),
                                          "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        self.cpu0, self.switches0 = cpu_ms(pid), _switches(pid)

    def stop(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"source": "/proc", "cpu_ms": None, "switches": None, "syscalls": None}
        cpu1, switches1 = cpu_ms(self.pid), _switches(self.pid)
        if self.cpu0 is not None and cpu1 is not None:
            out["cpu_ms"] = cpu1 - self.cpu0
        if self.switches0 is not None and switches1 is not None:
            out["switches"] = switches1 - self.switches0
        if self.proc is None:
            return out
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return out
        figures = parse_perf_stat(self.out.read_text() if self.out.exists() else "")
        if figures.get("task-clock") is not None:
            out.update(source="perf stat", cpu_ms=figures["task-clock"], switches=figures.get("context-switches"),
                       syscalls=figures.get("raw_syscalls:sys_enter"))
        return out


def parse_perf_stat(text: str) -> Dict[str, Optional[float]]:
    """``perf stat -x ,`` output: {event: value} (task-clock in ms; None for an event not counted)."""
    out: Dict[str, Optional[float]] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or line.startswith("#"):
            continue
        try:
            out[fields[2]] = float(fields[0])
        except ValueError:
            out[fields[2]] = None
    return out


def _switches(pid: int) -> Optional[int]:
    """Voluntary and involuntary context switches of the live threads of ``pid`` (/proc)."""
    total, found = 0, False
    for task in glob.glob("/proc/%d/task/*/status" % pid):
        try:
            with open(task) as fh:
                for line in fh:
                    if "ctxt_switches:" in line:
                        total += int(line.split()[1])
                        found = True
        except (OSError, ValueError, IndexError):
            continue
    return total if found else None


def _delivered(requests: List[Any]) -> int:
    """Distinct events and transactions accepted: a request resent after a timeout on our side (it
    had reached the upstream: Sentry deduplicates by event id) or a client report is no delivery."""
    return len({rec.envelope.event_id for rec in requests
                if rec.envelope is not None and rec.status == 200 and rec.envelope.event_id})


def _start_profile(pid: int, out: Path) -> Optional["subprocess.Popen[bytes]"]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(exe, os.X_OK):
        say("profile: py-spy is not installed (pip install py-spy); no profile")
        return None
    return subprocess.Popen([exe, "record", "-p", str(pid), "-r", "2000", "-f", "raw", "-o", str(out),
                             "--threads", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _stop_profile(spy: "subprocess.Popen[bytes]") -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        spy.wait(20)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(5)


#: Where a profiled sample's CPU went, by the first matching frame (outermost first in the list).
PROFILE_PARTS = (
    ("TLS connect (new upstream connection)", ("HTTPSConnection.connect", "HTTPConnection._new_conn")),
    ("upstream request and reply", ("Transport.send",)),
    ("SDK posts (ingest)", ("sentry_ext/ingest/",)),
    ("Telemetry API batches", ("sentry_ext/awslambda/telemetry_listener.py", "sentry_ext/insight/invocations.py",
                               "sentry_ext/awslambda/telemetry_records.py")),
    ("lifecycle (INVOKE, /event/next, drain)", ("sentry_ext/main.py",)),
    ("sender threads (queue, wake-ups)", ("sentry_ext/delivery/forwarder.py", "sentry_ext/delivery/queue.py")),
)
#: Leaf frames where a sampled thread was blocked, not running (py-spy's idle detection misses some).
PROFILE_WAITS = ("Condition.wait", "select (selectors.py", "SocketIO.readinto", "SSLSocket.read ", "Event.wait",
                 "Thread.join", "_read_response (sentry_ext/awslambda/extensions_api.py", "socket.accept")


def profile_breakdown(path: Path) -> Optional[Dict[str, float]]:
    """Share of on-CPU samples per PROFILE_PARTS from a py-spy ``raw`` profile (None without one)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    parts: Dict[str, float] = {}
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any(frames[-1].startswith(w) or w in frames[-1] for w in PROFILE_WAITS):
            continue
        total += int(count)
        part = next((name for name, marks in PROFILE_PARTS if any(m in f for f in frames for m in marks)), "other")
        parts[part] = parts.get(part, 0) + int(count)
    return {name: 100.0 * n / total for name, n in sorted(parts.items(), key=lambda kv: -kv[1])} if total else None


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """p50/p95 of each figure over every invocation of ``runs`` (one contender), Init over the cold ones."""
    rows = [r for run in runs for r in run["rows"] if r["status"] == "success"]
    out: Dict[str, Any] = {"invocations": len(rows), "failed": sum(run["failed"] for run in runs),
                           "delivered": sum(run["delivered"] for run in runs),
                           "expected": sum(run["expected"] for run in runs)}
    for figure in FIGURES:
        values = [r[figure] for r in rows if r.get(figure) is not None]
        out[figure] = {"p50": percentile(values, 50), "p95": percentile(values, 95)}
    inits = [r["init_ms"] for r in rows if r.get("init_ms") is not None]
    out["init_ms"] = {"p50": percentile(inits, 50), "p95": percentile(inits, 95)}
    out["handshakes_per_invocation"] = sum(r["handshakes"] for r in rows) / len(rows) if rows else None
    out["resumed_per_invocation"] = sum(r["resumed"] for r in rows) / len(rows) if rows else None
    # every handshake, the SHUTDOWN drain's included, per request the upstream accepted; and how
    # many envelopes were still queued when the last invocation ended (mean per sandbox)
    accepted = sum(run.get("accepted_requests", 0) for run in runs)
    out["handshakes_per_request"] = (sum(run.get("handshakes_total", 0) for run in runs) / accepted
                                     if accepted else None)
    out["left_for_shutdown"] = sum(run.get("left_for_shutdown", 0) for run in runs) / len(runs) if runs else None
    return out


def counted_per_invocation(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per counted invocation: CPU ms, wake-ups (context switches) and syscalls, the median of the
    runs with their range ([min, max]), and where they came from."""
    out: Dict[str, Any] = {}
    counted = [run["counted"] for run in runs if run.get("counted")]
    for name, field in (("cpu_per_invocation_ms", "cpu_ms"), ("wakeups_per_invocation", "switches"),
                        ("syscalls_per_invocation", "syscalls")):
        values = [c[field] / CPU_COUNTED for c in counted if c.get(field) is not None]
        out[name] = percentile(values, 50) if values else None
        out[name + "_range"] = [min(values), max(values)] if values else None
    out["counted_by"] = sorted({c["source"] for c in counted})
    return out


def _fmt(value: Optional[float], digits: int = 0) -> str:
    return "–" if value is None else "%.*f" % (digits, value)


def _ranged(figure: Dict[str, Any], name: str, digits: int) -> str:
    value, span = figure.get(name), figure.get(name + "_range")
    if value is None:
        return "–"
    if not span or span[0] == span[1]:
        return _fmt(value, digits)
    return "%s [%s–%s]" % (_fmt(value, digits), _fmt(span[0], digits), _fmt(span[1], digits))


def build_report(data: Dict[str, Any]) -> str:
    labels = data["labels"]
    out = []
    quota = data.get("quota")
    if quota:
        lines = ["128 MB: CPU quota %d µs per %d µs; upstream HTTPS, %d ms away, idle connections closed after %s s; "
                 "%.1f s freezes; %d invocation(s) per contender and round, %d round(s)"
                 % (quota["quota_us"], quota["period_us"], DELAY_S * 1000, data.get("idle_close_s") or "never", FREEZE_S,
                    data["invocations"], data["rounds"]), "",
                 "| setup | function p50 / p95 ms | post-runtime p50 / p95 ms | billed p50 / p95 ms | Init p50 ms "
                 "| TLS handshakes (resumed) per invocation | per request, SHUTDOWN included | left for SHUTDOWN "
                 "| delivered |", "|---|---|---|---|---|---|---|---|---|"]
        for key, s in data["cost"].items():
            lines.append("| %s | %s / %s | %s / %s | %s / %s | %s | %s (%s) | %s | %s | %d/%d |" % (
                labels[key], _fmt(s["function_ms"]["p50"]), _fmt(s["function_ms"]["p95"]),
                _fmt(s["post_runtime_ms"]["p50"], 1), _fmt(s["post_runtime_ms"]["p95"], 1),
                _fmt(s["billed_ms"]["p50"]), _fmt(s["billed_ms"]["p95"]), _fmt(s["init_ms"]["p50"]),
                _fmt(s["handshakes_per_invocation"], 2), _fmt(s["resumed_per_invocation"], 2),
                _fmt(s["handshakes_per_request"], 2), _fmt(s["left_for_shutdown"], 1), s["delivered"], s["expected"]))
        out.append("\n".join(lines))
    elif data.get("quota_skipped"):
        out.append("128 MB suite: SKIPPING (%s)." % data["quota_skipped"])
    if data.get("cpu"):
        cases = data["cpu"]
        sources = sorted({src for by in cases.values() for f in by.values() for src in f.get("counted_by", [])})
        lines = ["Per thawed invocation on whole cores (extension process, invocations %d-%d of %d, %s; medians of %d "
                 "run(s), [range]); upstream HTTPS %d ms away, idle connections kept / closed after %s s (each %.1f s "
                 "freeze outlasts it):" % (CPU_WARM + 1, CPU_WARM + CPU_COUNTED, CPU_WARM + CPU_COUNTED,
                                           " and ".join(sources) or "–", data["rounds"], DELAY_S * 1000,
                                           data.get("idle_close_s") or "never", FREEZE_S),
                 "", "| connections | extension | CPU ms | wake-ups | syscalls | TLS handshakes (resumed) "
                 "| per request, SHUTDOWN included | left for SHUTDOWN | delivered |", "|---|---|---|---|---|---|---|---|---|"]
        for case, by in cases.items():
            for key, figure in by.items():
                lines.append("| %s | %s | %s | %s | %s | %s (%s) | %s | %s | %s/%s |" % (
                    case, labels[key], _ranged(figure, "cpu_per_invocation_ms", 2),
                    _ranged(figure, "wakeups_per_invocation", 0), _ranged(figure, "syscalls_per_invocation", 0),
                    _fmt(figure["handshakes_per_invocation"], 2), _fmt(figure["resumed_per_invocation"], 2),
                    _fmt(figure["handshakes_per_request"], 2), _fmt(figure["left_for_shutdown"], 1),
                    figure["delivered"], figure["expected"]))
        out.append("\n".join(lines))
    if data.get("profile"):
        out.append("Where ours spends it (py-spy, invocations 2-%d, on-CPU samples): %s" % (
            CPU_WARM + CPU_COUNTED, ", ".join("%s %.0f %%" % kv for kv in data["profile"].items())))
    if data.get("targets"):
        out.append("\n".join("- %s: %s (target %s %s× %s) %s" % (
            name, _fmt(t["ratio"], 2), t["op"], t["bound"], labels.get(t["against"], t["against"]),
            "✅" if t["met"] else ("❌" if t["met"] is False else "–")) for name, t in data["targets"].items()))
    if data.get("peer_skipped"):
        out.append("Node extension: skipped (%s)." % data["peer_skipped"])
    return "\n\n".join(out)


def _targets(data: Dict[str, Any]) -> Dict[str, Any]:
    cost, cpu = data.get("cost") or {}, data.get("cpu") or {}
    kept, closed = cpu.get("kept") or {}, cpu.get("closed") or {}
    values = {
        "cpu_per_invocation_kept": ((kept.get("adaptive") or {}).get("cpu_per_invocation_ms"),
                                    (kept.get("peer") or {}).get("cpu_per_invocation_ms")),
        "cpu_per_invocation_closed": ((closed.get("adaptive") or {}).get("cpu_per_invocation_ms"),
                                      (closed.get("peer") or {}).get("cpu_per_invocation_ms")),
        "billed_p50": (((cost.get("adaptive") or {}).get("billed_ms") or {}).get("p50"),
                       ((cost.get("sdk") or {}).get("billed_ms") or {}).get("p50")),
        "function_p50": (((cost.get("adaptive") or {}).get("function_ms") or {}).get("p50"),
                         ((cost.get("peer") or {}).get("function_ms") or {}).get("p50")),
        "billed_p50_end_vs_before": (((cost.get("end") or {}).get("billed_ms") or {}).get("p50"),
                                     ((cost.get("baseline-end") or {}).get("billed_ms") or {}).get("p50")),
        "billed_p50_adaptive_vs_before": (((cost.get("adaptive") or {}).get("billed_ms") or {}).get("p50"),
                                          ((cost.get("baseline") or {}).get("billed_ms") or {}).get("p50")),
    }
    out = {}
    for name, (op, bound, against) in TARGETS.items():
        ours, theirs = values[name]
        ratio = ours / theirs if ours is not None and theirs else None
        out[name] = {"ours": ours, "theirs": theirs, "ratio": ratio, "op": op, "bound": bound, "against": against,
                     "met": None if ratio is None else ratio <= bound}
    return out


def main(argv: Optional[List[str]] = None, script: str = "tools/bench_cost.py") -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=["none", "node"], default="none", help="also run Sentry's Node extension")
    parser.add_argument("--offline", action="store_true", help="never run npm; use build/peer/ if it is there")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 invocations, baseline and adaptive only")
    parser.add_argument("--only", choices=["128mb", "cpu"], default=None, help="run only one of the two suites")
    parser.add_argument("--idle-close", type=float, default=IDLE_CLOSE_S,
                        help="the upstream closes connections idle this long, s (default %.1f; 0: never; the CPU "
                             "suite's \"closed\" case uses it too, its \"kept\" case never closes)" % IDLE_CLOSE_S)
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also run this git revision of ours in `adaptive` (e.g. main), interleaved")
    parser.add_argument("--ours-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for our extension (repeatable), e.g. SENTRY_EXT_MAX_INFLIGHT=1")
    parser.add_argument("--floor", action="store_true",
                        help="128 MB suite: also the sample function with no extension and its SDK's posts refused "
                             "at once (the function duration no relay can go below)")
    parser.add_argument("--floor-relay", action="store_true",
                        help="CPU suite: also tools/floor_relay.py, the least a Python relay of the extension's shape "
                             "does per invocation (the floor under ours)")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw profile of ours (adaptive) to this file")
    parser.add_argument("--profile-case", choices=CASES, default="kept",
                        help="which CPU case --profile samples (default kept)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default bench-results/cost-<time>.json)")
    opts = parser.parse_args(args)
    ours_env = dict(item.partition("=")[::2] for item in opts.ours_env)
    if any(not name.startswith("SENTRY_EXT_") for name in ours_env):
        parser.error("--ours-env takes SENTRY_EXT_* settings only")
    started = time.monotonic()
    info = machine()
    invocations = 3 if opts.quick else 20
    idle = opts.idle_close or None
    with tempfile.TemporaryDirectory(prefix="sentry-ext-bench-cost-") as tmp_name:
        tmp = Path(tmp_name)
        cert, key = self_signed(tmp / "tls")
        ours_opt = make_opt(tmp / "ours")
        empty_opt = tmp / "none" / "opt"
        (empty_opt / "extensions").mkdir(parents=True)
        contenders = [Contender("sdk", "`sentry-sdk` straight to the upstream (no extension)", "sdk", empty_opt, None)]
        if opts.floor:
            contenders.append(Contender("floor", "`sentry-sdk` posting to a closed local port (no extension: the "
                                        "function's own SDK work, the floor)", "floor", empty_opt, None))
        modes = ("adaptive",) if opts.quick else ("end", "background", "adaptive")
        suffix = "".join(" %s=%s" % kv for kv in sorted(ours_env.items()))
        contenders += [Contender(mode, "ours, `%s`%s" % (mode, suffix), "ours", ours_opt, EXTENSION_NAME, mode, ours_env)
                       for mode in modes]
        baseline_note = ""
        if opts.baseline:
            base_opt, baseline_note = baseline_opt(tmp / "baseline", opts.baseline)
            if not opts.quick:  # `end` as it was too (128 MB suite only): billed time, before and after
                contenders.append(Contender("baseline-end", "ours at `%s` (before), `end`%s" % (
                    baseline_note.split()[0], suffix), "ours", base_opt, EXTENSION_NAME, "end", ours_env))
            contenders.append(Contender("baseline", "ours at `%s` (before), `adaptive`%s" % (
                baseline_note.split()[0], suffix), "ours", base_opt, EXTENSION_NAME, "adaptive", ours_env))
        peer_skipped, peer_note = ("not requested (use --peer node)", "") if opts.peer != "node" else (None, "")
        if opts.peer == "node":
            peer_dir, peer_skipped, peer_note = peer_opt(tmp / "peer", opts.offline, say)
            if peer_dir is not None:
                contenders.append(Contender("peer", "Sentry Node extension (tunnel function)", "peer", peer_dir, PEER_NAME))
            if peer_skipped:
                say("SKIPPING the Node extension peer: %s" % peer_skipped)
        relay = [floor_relay(tmp)] if opts.floor_relay else []  # the CPU suite only
        labels = {c.key: c.label for c in contenders + relay}
        data: Dict[str, Any] = {"labels": labels, "invocations": invocations, "rounds": opts.rounds, "idle_close_s": idle,
                                "peer_skipped": peer_skipped, "peer_note": peer_note, "baseline": baseline_note}
        why_not = CpuQuota.unavailable()
        if opts.only != "cpu" and why_not is not None:
            say("SKIPPING the 128 MB suite: %s" % why_not)
            print("SKIPPING the 128 MB suite: %s" % why_not)
            data["quota_skipped"] = why_not
        raw: Dict[str, List[Dict[str, Any]]] = {c.key: [] for c in contenders}  # the 128 MB suite
        cpu_raw: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
        cpu_set = [c for c in contenders if c.key in ("adaptive", "baseline")] + relay + [
            c for c in contenders if c.key == "peer"]
        for round_no in range(opts.rounds):
            order = contenders if round_no % 2 == 0 else list(reversed(contenders))
            if opts.only != "cpu" and why_not is None:
                for contender in order:
                    say("128 MB, round %d: %s ..." % (round_no + 1, contender.label))
                    with CpuQuota(lambda_quota_us(MEMORY_MB, PERIOD_US), PERIOD_US) as quota:
                        run = run_sandbox(contender, tmp, cert, key, invocations, quota, idle_close_s=idle)
                        run["throttled"] = quota.stat()
                    raw[contender.key].append(run)
                    data["quota"] = {"quota_us": quota.quota_us, "period_us": quota.period_us}
                    data["cgroup"] = str(quota.path)
            if opts.only != "128mb" and not opts.quick:
                for case in CASES:
                    for contender in (cpu_set if round_no % 2 == 0 else list(reversed(cpu_set))):
                        say("CPU per invocation, round %d, connections %s: %s ..." % (round_no + 1, case,
                                                                                     contender.label))
                        profile = opts.profile if (opts.profile and contender.key == "adaptive" and round_no == 0
                                                   and case == opts.profile_case) else None
                        run = run_sandbox(contender, tmp, cert, key, CPU_WARM + CPU_COUNTED, None, profile,
                                          None if case == "kept" else idle, count_from=CPU_WARM)
                        cpu_raw.setdefault(case, {}).setdefault(contender.key, []).append(run)
    if any(raw.values()):
        data["cost"] = {key: summarize(runs) for key, runs in raw.items() if runs}
    if cpu_raw:
        data["cpu"] = {case: {key: {**counted_per_invocation(runs),
                                    **{k: v for k, v in summarize(runs).items()
                                       if k.endswith(("per_invocation", "per_request")) or k in CPU_KEPT}}
                              for key, runs in by.items()} for case, by in cpu_raw.items()}
    data["targets"] = _targets(data) if not opts.quick else {}
    if opts.profile:
        data["profile"] = profile_breakdown(opts.profile)
    data.update(machine=info, command=command_line(script, args),
                raw={"cost": raw, "cpu": cpu_raw},
                elapsed_s=round(time.monotonic() - started, 1))
    report = build_report(data)
    out = save_results(data, opts.out, "cost", opts.quick)
    m = data["machine"]
    print("%s\n\nMachine: %s × %s, %s MiB, Python %s, Linux %s, %s, load average %s → %s.%s\nCommand: `%s` (%.0f s)\n"
          % (report, m["nproc"], m["cpu"], m["mem_mib"], m["python"], m["kernel"], m["date"], m["loadavg"], loadavg(),
             (" Peer: %s." % peer_note) if peer_note else "", data["command"], data["elapsed_s"]))
    print("JSON: %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
