"""Remote-upstream suite of the benchmark: bursts against an HTTPS upstream 80 and 200 ms away.

    .venv/bin/python tools/bench_remote.py [--peer node] [--baseline REV] [--quick] [--out FILE]
    (or: .venv/bin/python tools/bench.py --remote [same options])

The fake upstream (``tools/fake_upstream.py``) serves HTTPS with a self-signed ECDSA certificate
made now with the ``openssl`` command (``tools/tlsutil.py``) and answers each request after the
delay; our extension trusts the certificate through ``SSL_CERT_FILE``, the Node extension through
``NODE_EXTRA_CA_CERTS``. In the Lambda emulator with real freezes, one invocation of
``tools/sample_function/tunnel_app.py`` posts a burst of 3, 30, 300 or 2,000 ~1 KiB envelopes
synchronously before returning (as ``@sentry/aws-serverless`` flushes); the sandbox is frozen for
0.5 s, a second invocation posts nothing (the "next invocation"), a 0.2 s freeze, then SHUTDOWN.

Per run: delivered before the first freeze, delivered by the end, duplicates seen upstream,
post-runtime time of the burst's invocation (`end`), peak RSS (VmHWM) and peak threads (sampled
every 10 ms from /proc) of the extension process, TLS handshakes the upstream completed, and for
ours what was spooled. Contenders: this tree (``bin/`` launcher, ``python -I``), the same at the
git revision ``--baseline`` (extracted with ``git archive``), and Sentry's Node extension.

It also runs the loopback ingest burst of ``tools/bench.py`` (throughput, p99, CPU per envelope)
for this tree and the baseline, alternating, so the two are compared within one run.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

if __package__ in (None, ""):  # run as a script: make ``tools`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench_support import (PEER_NAME, PEER_PORT, command_line, loadavg, machine, peer_opt,  # noqa: E402
                                 save_results, say)
from tools.emulator import Emulator  # noqa: E402
from tools.fake_upstream import FakeUpstream  # noqa: E402
from tools.procfs import status_kib  # noqa: E402
from tools.sandbox import EXTENSION_NAME, ROOT, SAMPLE_FUNCTION, function_env, make_opt  # noqa: E402
from tools.soak import parse_summary  # noqa: E402
from tools.stats import median  # noqa: E402
from tools.tlsutil import self_signed, server_context  # noqa: E402

BURSTS = (3, 30, 300, 2000)
DELAYS_S = (0.08, 0.2)
FREEZE_S = 0.5
SAMPLE_EVERY_S = 0.01
HANDSHAKE_RTTS = 3.0  # a new connection: TCP's round trip and TLS's, and the slack a real one has

#: (delay ms, burst, figure) -> (comparison, bound): the issue's targets for our extension.
TARGETS: Dict[Tuple[int, int, str], Tuple[str, float]] = {
    (80, 300, "before_freeze_pct"): (">=", 100.0),
    (80, 300, "post_runtime_ms"): ("<=", 600.0),  # issue 22: with handshakes modelled (--handshake-rtts)
    (80, 300, "duplicates"): ("<=", 0),
    (80, 2000, "by_end_pct"): (">=", 100.0),
    (80, 2000, "rss_peak_mib"): ("<=", 40.0),
}


class Contender:
    """An extension under test: its /opt directory, executable name, and kind."""

    def __init__(self, key: str, label: str, opt: Path, exe: str, kind: str) -> None:
        self.key, self.label, self.opt, self.exe, self.kind = key, label, opt, exe, kind


def baseline_opt(base: Path, rev: str) -> Tuple[Path, str]:
    """``git archive <rev>`` of this repository under ``base/src``, and an /opt whose
    ``extensions/<name>`` links to its launcher; returns (opt, "rev subject")."""
    src = base / "src"
    src.mkdir(parents=True, exist_ok=True)
    data = subprocess.run(["git", "archive", rev], cwd=str(ROOT), capture_output=True, check=True, timeout=60).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(src)  # our own repository's tree
    opt = base / "opt"
    (opt / "extensions").mkdir(parents=True, exist_ok=True)
    os.symlink(src / "bin" / EXTENSION_NAME, opt / "extensions" / EXTENSION_NAME)
    subject = subprocess.run(["git", "log", "-1", "--format=%h %s", rev], cwd=str(ROOT), capture_output=True,
                             text=True, timeout=30).stdout.strip()
    return opt, subject


class ProcSampler:
    """Polls /proc/<pid>/status for the thread count (bounded by ``limit_s``)."""

    def __init__(self, pid: int, limit_s: float = 120.0) -> None:
        self.pid = pid
        self.peak_threads = 0
        self._stop = threading.Event()
        self._limit_s = limit_s
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self._limit_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            threads = status_kib(self.pid, "Threads")
            if threads is None:
                return
            self.peak_threads = max(self.peak_threads, threads)
            self._stop.wait(SAMPLE_EVERY_S)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak_threads


def run_burst(contender: Contender, tmp: Path, cert: Path, key: Path, delay_s: float, burst: int,
              handshake_rtts: float = 0.0) -> Dict[str, Any]:
    """One sandbox: a burst invocation, a freeze, an empty invocation, a freeze, SHUTDOWN."""
    with FakeUpstream(delay_s=delay_s, tls=server_context(cert, key), handshake_rtts=handshake_rtts) as upstream:
        if contender.kind == "peer":
            env: Dict[str, str] = {"SENTRY_DSN": upstream.dsn(), "NODE_EXTRA_CA_CERTS": str(cert)}
            port = PEER_PORT
        else:
            env = function_env(upstream.dsn(), tmp / ("spool-%s-%d-%d" % (contender.key, delay_s * 1000, burst)),
                               SENTRY_EXT_FLUSH="end", SSL_CERT_FILE=str(cert))
            port = int(env["SENTRY_EXT_PORT"])
        runtime_env = {"SENTRY_TUNNEL_URL": "http://127.0.0.1:%d/envelope" % port, "SENTRY_DSN": upstream.dsn()}
        with Emulator(contender.opt, task_root=SAMPLE_FUNCTION, handler="tunnel_app.handler", env=env,
                      runtime_env=runtime_env, function_name="bench-remote", timeout_s=60.0) as emu:
            emu.start()
            pid = emu.pids.get(contender.exe)
            sampler = ProcSampler(pid) if pid else None
            result = emu.invoke({"envelopes": burst})
            emu.wait_frozen_for(FREEZE_S)
            second = emu.invoke({"envelopes": 0})
            emu.wait_frozen_for(0.2)
            hwm = status_kib(pid, "VmHWM") if pid else None
            shutdown = emu.shutdown()
            peak_threads = sampler.stop() if sampler else None
            log = emu.output(contender.exe)
        records = upstream.requests
        handshakes = upstream.handshakes
    body = json.loads(result.response or b"{}") if result.status == "success" else {}
    ids = set(body.get("event_ids", []))
    accepted = sum(1 for s in body.get("statuses", []) if s == 200)
    arrivals: Dict[str, List[float]] = collections.defaultdict(list)
    for rec in records:
        if rec.envelope is not None and rec.status == 200 and rec.envelope.event_id in ids:
            arrivals[rec.envelope.event_id].append(rec.t)
    before = sum(1 for t in arrivals.values() if result.freeze_t is not None and min(t) <= result.freeze_t)
    spooled = parse_summary(log).get("spooled", 0) if contender.kind != "peer" else None
    return {
        "contender": contender.key, "delay_ms": round(delay_s * 1000), "burst": burst,
        "status": result.status, "second_status": second.status, "accepted": accepted,
        "refused": burst - accepted if body else None,
        "before_freeze": before, "by_end": len(arrivals),
        "before_freeze_pct": 100.0 * before / burst, "by_end_pct": 100.0 * len(arrivals) / burst,
        "duplicates": sum(len(t) - 1 for t in arrivals.values()),
        "post_runtime_ms": result.post_runtime_ms, "runtime_ms": result.runtime_ms,
        "rss_peak_mib": hwm / 1024.0 if hwm else None, "peak_threads": peak_threads,
        "tls_handshakes": handshakes, "spooled": spooled,
        "shutdown_exit": shutdown.exit_codes.get(contender.exe), "shutdown_ms": shutdown.exit_ms.get(contender.exe),
        "killed": contender.exe in shutdown.killed,
        "summary": _summary_line(log),
        "log_tail": log[-3000:] if result.status != "success" else "",
    }


def _summary_line(log: str) -> str:
    return log[log.rindex("summary:"):].splitlines()[0] if "summary:" in log else ""


def loopback_ingest(contenders: List[Contender], tmp: Path, runs: int, quick: bool) -> Dict[str, Any]:
    """``tools/bench.py``'s loopback ingest burst (4 threads × 500 posts) per contender, alternating."""
    from tools import bench

    settings = bench.Settings(quick, None)
    rows: Dict[str, List[Dict[str, Any]]] = {c.key: [] for c in contenders}
    for index in range(runs):
        for contender in (contenders if index % 2 == 0 else list(reversed(contenders))):
            wrapped = bench.Contender(contender.key, contender.label, contender.opt, contender.exe, "ours")
            rows[contender.key].append(bench.bench_ingest(wrapped, tmp, "sdk", settings, runs_n=1))
    out: Dict[str, Any] = {}
    for key, got in rows.items():
        out[key] = {figure: median([r.get(figure) for r in got if r.get(figure) is not None])
                    for figure in ("throughput_per_s", "p50_ms", "p99_ms", "cpu_per_envelope_ms", "rss_peak_mib",
                                   "rss_after_init_mib", "ready_ms", "cpu_ready_ms")}
        out[key]["runs"] = len(got)
        out[key]["refused"] = sum(n for r in got for code, n in (r.get("statuses") or {}).items() if code != "200")
        out[key]["samples"] = {figure: [r.get(figure) for r in got]
                               for figure in ("throughput_per_s", "p99_ms", "cpu_per_envelope_ms")}
    return out


def _fmt(value: Optional[float], digits: int = 0) -> str:
    return "–" if value is None else "%.*f" % (digits, value)


def _met(run: Dict[str, Any], figure: str) -> Optional[bool]:
    target = TARGETS.get((run["delay_ms"], run["burst"], figure))
    value = run.get(figure)
    if target is None or value is None:
        return None
    op, bound = target
    return value <= bound if op == "<=" else value >= bound


def build_report(data: Dict[str, Any]) -> str:
    labels = data["labels"]
    lines = ["| upstream | burst | extension | before the freeze | by the end | duplicates | post-runtime ms "
             "| peak RSS MiB | peak threads | TLS handshakes | spooled |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in data["remote"]:
        def cell(figure: str, text: str) -> str:
            met = _met(run, figure)
            return text + ("" if met is None else (" ✅" if met else " ❌"))
        refused = " (%d refused)" % run["refused"] if run.get("refused") else ""
        lines.append("| %d ms | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            run["delay_ms"], run["burst"], labels[run["contender"]],
            cell("before_freeze_pct", "%d (%s %%)%s" % (run["before_freeze"], _fmt(run["before_freeze_pct"]), refused)),
            cell("by_end_pct", "%d (%s %%)" % (run["by_end"], _fmt(run["by_end_pct"]))),
            cell("duplicates", str(run["duplicates"])),
            cell("post_runtime_ms", _fmt(run["post_runtime_ms"])),
            cell("rss_peak_mib", _fmt(run["rss_peak_mib"], 1)),
            _fmt(run["peak_threads"]), run["tls_handshakes"], "–" if run["spooled"] is None else run["spooled"]))
    out = ["\n".join(lines)]
    loop = data.get("loopback") or {}
    if loop:
        ll = ["| loopback ingest burst (4 × 500 posts, %d runs each, alternating; medians) | throughput posts/s "
              "| p50 ms | p99 ms | CPU per envelope ms | peak RSS MiB | answers other than 200 (all runs) |"
              % max(v["runs"] for v in loop.values()), "|---|---|---|---|---|---|---|"]
        for key, fig in loop.items():
            ll.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                labels[key], _fmt(fig["throughput_per_s"]), _fmt(fig["p50_ms"], 2), _fmt(fig["p99_ms"], 2),
                _fmt(fig["cpu_per_envelope_ms"], 3), _fmt(fig["rss_peak_mib"], 1), fig["refused"]))
        out.append("\n".join(ll))
    if data.get("peer_skipped"):
        out.append("Node extension: skipped (%s)." % data["peer_skipped"])
    return "\n\n".join(out)


def main(argv: Optional[List[str]] = None, script: str = "tools/bench_remote.py") -> int:
    """``script`` is how the run was started, for the report's command line (tools/bench.py --remote too)."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=["none", "node"], default="none", help="also run Sentry's Node extension")
    parser.add_argument("--offline", action="store_true", help="never run npm; use build/peer/ if it is there")
    parser.add_argument("--baseline", default=None, help="also run this git revision of the extension (e.g. main)")
    parser.add_argument("--quick", action="store_true", help="smoke run: bursts 3 and 30 at 80 ms, no loopback suite")
    parser.add_argument("--loopback-runs", type=int, default=4, help="loopback ingest runs per contender (default 4)")
    parser.add_argument("--only", choices=["remote", "loopback"], default=None, help="run only one of the two suites")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default bench-results/remote-<time>.json)")
    parser.add_argument("--bursts", default=None, help="comma-separated bursts (default %s)" % ",".join(map(str, BURSTS)))
    parser.add_argument("--delays-ms", default=None, help="comma-separated upstream delays, ms (default 80,200)")
    parser.add_argument("--handshake-rtts", type=float, default=HANDSHAKE_RTTS,
                        help="round trips a new connection's handshake takes upstream (default %g: TCP's and TLS's; "
                             "0: free, as on loopback)" % HANDSHAKE_RTTS)
    opts = parser.parse_args(args)
    started = time.monotonic()
    info = machine()
    bursts = (3, 30) if opts.quick else BURSTS
    delays = (0.08,) if opts.quick else DELAYS_S
    if opts.bursts:
        bursts = tuple(int(b) for b in opts.bursts.split(","))
    if opts.delays_ms:
        delays = tuple(float(d) / 1000.0 for d in opts.delays_ms.split(","))
    with tempfile.TemporaryDirectory(prefix="sentry-ext-bench-remote-") as tmp_name:
        tmp = Path(tmp_name)
        cert, key = self_signed(tmp / "tls")
        contenders = [Contender("ours", "ours (this tree)", make_opt(tmp / "ours"), EXTENSION_NAME, "ours")]
        labels = {"ours": "ours (this tree)"}
        baseline_note = ""
        if opts.baseline:
            opt, baseline_note = baseline_opt(tmp / "baseline", opts.baseline)
            contenders.append(Contender("baseline", "ours at %s" % opts.baseline, opt, EXTENSION_NAME, "ours"))
            labels["baseline"] = "ours at `%s` (before)" % baseline_note.split()[0]
        peer_skipped, peer_note = None, ""
        if opts.peer == "node":
            peer_dir, peer_skipped, peer_note = peer_opt(tmp / "peer", opts.offline, say)
            if peer_dir is not None:
                contenders.append(Contender("peer", "Sentry Node extension", peer_dir, PEER_NAME, "peer"))
                labels["peer"] = "Sentry Node extension"
        else:
            peer_skipped = "not requested (use --peer node)"
        remote: List[Dict[str, Any]] = []
        for delay_s in (() if opts.only == "loopback" else delays):
            for index, burst in enumerate(bursts):
                order = contenders if index % 2 == 0 else list(reversed(contenders))
                for contender in order:
                    say("remote: %d ms, burst %d, %s ..." % (delay_s * 1000, burst, contender.label))
                    remote.append(run_burst(contender, tmp, cert, key, delay_s, burst, opts.handshake_rtts))
        remote.sort(key=lambda r: (r["delay_ms"], r["burst"], [c.key for c in contenders].index(r["contender"])))
        loopback: Dict[str, Any] = {}
        ours_like = [c for c in contenders if c.kind == "ours"]
        if not opts.quick and opts.loopback_runs > 0 and opts.only != "remote":
            say("loopback ingest burst: %d run(s) each of %s ..." % (opts.loopback_runs, ", ".join(c.key for c in ours_like)))
            loopback = loopback_ingest(ours_like, tmp, opts.loopback_runs, False)
    data: Dict[str, Any] = {
        "command": command_line(script, args), "handshake_rtts": opts.handshake_rtts,
        "machine": info, "quick": opts.quick, "labels": labels, "baseline": baseline_note,
        "peer_note": peer_note, "peer_skipped": peer_skipped if opts.peer == "node" else None,
        "remote": remote, "loopback": loopback,
        "targets_missed": ["%d ms × %d: %s" % (r["delay_ms"], r["burst"], f) for r in remote if r["contender"] == "ours"
                           for f in ("before_freeze_pct", "by_end_pct", "duplicates", "post_runtime_ms", "rss_peak_mib")
                           if _met(r, f) is False],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    report = build_report(data)
    out = save_results(data, opts.out, "remote", opts.quick)
    m = data["machine"]
    print("%s\n\nMachine: %s × %s, %s MiB, Python %s, Linux %s, %s, load average %s → %s.%s%s\nCommand: `%s` (%.0f s)\n"
          % (report, m["nproc"], m["cpu"], m["mem_mib"], m["python"], m["kernel"], m["date"], m["loadavg"], loadavg(),
             (" Baseline: %s." % baseline_note) if baseline_note else "", (" Peer: %s." % peer_note) if peer_note else "",
             data["command"], data["elapsed_s"]))
    print("targets missed: %s" % (", ".join(data["targets_missed"]) or "none"))
    print("JSON: %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
