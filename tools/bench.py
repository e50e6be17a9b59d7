"""Benchmark suite: cold start, footprint, ingest, post-runtime time, CPU and delivery, beside
Sentry's Node extension.

    .venv/bin/python tools/bench.py [--peer node] [--runs N] [--quick] [--out FILE]
    .venv/bin/python tools/bench.py --remote [--peer node] [--baseline REV]   (tools/bench_remote.py)
    .venv/bin/python tools/bench.py --cost [--peer node] [--rounds N]         (tools/bench_cost.py: 128 MB, CPU/invocation)

Everything runs on this machine, on loopback: the extension is exec'd from an /opt-like
directory exactly as Lambda execs it (``python -IS`` from the layer layout, the interpreter being
``sys.executable``), against a stub Extensions API (cold start, footprint, ingest) or the local
Lambda emulator with real freezes (``tools/emulator/``: post-runtime time and delivery), and
relays to the fake Sentry upstream (``tools/fake_upstream.py``). Each figure is a median over
several runs; ratios are taken between contenders measured in the same run (alternating).

Prints a Markdown table and writes JSON to ``bench-results/bench-<time>.json``. ``--quick`` is a
smoke run (few runs, small bursts, 3 invocations) for tests; its numbers are not the published ones.
``--peer node`` adds Sentry's Node extension (``@sentry/aws-serverless`` ``build/lambda-extension``,
fetched once with ``npm pack`` into ``build/peer/``); without ``node`` or the package it says so
and carries on.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

if __package__ in (None, ""):  # run as a script: make ``tools`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench_logs import bench_function_logs, bench_log_lines  # noqa: E402
from tools.bench_support import (PEER_NAME, PEER_PORT, Launched, base_env, fresh_layer_zip,  # noqa: E402
                                 command_line, loadavg, machine, opt_floor, opt_layer, peer_opt, save_results, say,
                                 wait_port)
from tools.ext_api_stub import ExtApiStub  # noqa: E402
from tools.netutil import free_port  # noqa: E402
from tools.procfs import cpu_ms, status_kib  # noqa: E402
from tools.stats import median, percentile  # noqa: E402
from tools.emulator import Emulator  # noqa: E402
from tools.fake_upstream import FakeUpstream  # noqa: E402
from tools.sandbox import EXTENSION_NAME, ROOT, SAMPLE_FUNCTION, function_env, local_dsn, make_opt  # noqa: E402

MIB = 1024.0

#: Every figure the JSON carries under "figures" (ours) and "peer" (Sentry's Node extension, where it applies).
FIGURE_KEYS = (
    "cold_start_ms", "cold_start_floor_ms", "cold_start_ratio", "cold_start_dev_ms", "register_ms",
    "cpu_to_first_next_ms", "rss_after_init_mib", "rss_peak_burst_mib",
    "ingest_p50_ms", "ingest_p99_ms", "ingest_throughput_per_s", "ingest_tunnel_p50_ms", "ingest_tunnel_p99_ms",
    "ingest_tunnel_throughput_per_s", "ingest_httpclient_p50_ms", "ingest_httpclient_p99_ms",
    "ingest_httpclient_throughput_per_s", "cpu_per_envelope_ms",
    "post_runtime_end_ms", "post_runtime_background_ms", "post_runtime_end_slow_upstream_ms",
    "delivery_before_freeze_pct", "delivery_by_end_pct", "cpu_per_log_line_us",
    "cpu_per_log_line_e2e_us", "log_post_runtime_extra_ms", "log_rss_extra_mib",
)

#: (figure key, comparison, bound) of each target in the issue.
TARGETS: Dict[str, Tuple[str, float]] = {
    "cold_start_ratio": ("<=", 1.5),
    "rss_after_init_mib": ("<=", 20.0),
    "rss_peak_burst_mib": ("<=", 32.0),
    "ingest_p50_ms": ("<=", 0.5),
    "ingest_p99_ms": ("<=", 3.0),
    "ingest_throughput_per_s": (">=", 3000.0),
    "post_runtime_end_ms": ("<=", 30.0),
    "post_runtime_background_ms": ("<=", 2.0),
    "post_runtime_end_slow_upstream_ms": ("<=", 150.0),
    "cpu_per_envelope_ms": ("<=", 0.5),
    "delivery_before_freeze_pct": (">=", 100.0),
    "cpu_per_log_line_us": ("<=", 20.0),
    "cpu_per_log_line_e2e_us": ("<=", 20.0),
    "log_rss_extra_mib": ("<=", 2.0),
}


class Settings:
    """Sizes of one benchmark run (full or ``--quick``)."""

    def __init__(self, quick: bool, runs: Optional[int]) -> None:
        self.quick = quick
        self.cold_runs = runs or (3 if quick else 15)
        self.ingest_runs = max(1, (runs or 3) // 5) if runs else (1 if quick else 3)
        self.threads = 4
        self.posts_per_thread = 50 if quick else 500
        self.invocations = 3 if quick else 20
        self.freeze_s = 0.2
        self.slow_upstream_s = 0.08
        self.idle_close_s = 0.1


class Contender:
    """One extension under test: where its executable is and how to point it at an upstream."""

    def __init__(self, key: str, label: str, opt: Path, exe: str, kind: str) -> None:
        self.key = key
        self.label = label
        self.opt = opt
        self.exe = exe
        self.kind = kind  # "ours" | "floor" | "peer"

    @property
    def path(self) -> Path:
        return self.opt / "extensions" / self.exe

    def env(self, upstream_dsn: str, tmp: Path, **overrides: str) -> Tuple[Dict[str, str], Optional[int]]:
        """(function environment, ingest port) for this contender."""
        if self.kind == "ours":
            env = function_env(upstream_dsn, tmp / "spool", **overrides)
            return env, int(env["SENTRY_EXT_PORT"])
        if self.kind == "peer":
            return {"SENTRY_DSN": upstream_dsn}, PEER_PORT
        return {}, None


# -------------------------------------------------------------------------------- cold start


def cold_start_once(contender: Contender, tmp: Path, upstream_dsn: str, exit_wait_s: float) -> Dict[str, Any]:
    """Spawn → register → first ``/event/next``, CPU and RSS at that moment; then SHUTDOWN."""
    env_extra, _ = contender.env(upstream_dsn, tmp)
    with ExtApiStub() as stub:
        env = base_env(stub.address)
        env.update(env_extra)
        proc = Launched(contender.path, env, tmp / ("%s.log" % contender.key),
                        on_spawn=lambda pid: setattr(stub, "watch_pid", pid))
        try:
            ok = stub.wait_first_next(10.0)
            row: Dict[str, Any] = {"ok": ok}
            if ok:
                assert stub.first_next_t is not None
                row.update(next_ms=(stub.first_next_t - proc.spawn_t) * 1000.0,
                           register_ms=((stub.register_t or stub.first_next_t) - proc.spawn_t) * 1000.0,
                           cpu_ms=stub.first_next_cpu_ms,
                           rss_mib=(stub.first_next_rss_kib or 0) / MIB)
            stub.push_shutdown()
            code = proc.wait_exit(exit_wait_s)
            row["exited"] = code is not None
            if not ok:
                row["log"] = proc.output()[-2000:]
        finally:
            proc.kill()
    return row


def bench_cold_start(contenders: List[Contender], runs: int, tmp: Path, upstream_dsn: str) -> Dict[str, Any]:
    """``runs`` rounds, contenders alternating within each round; medians per contender."""
    rows: Dict[str, List[Dict[str, Any]]] = {c.key: [] for c in contenders}
    for index in range(runs):
        order = contenders if index % 2 == 0 else list(reversed(contenders))
        for contender in order:
            exit_wait = 0.2 if contender.kind == "peer" else 3.0  # the Node extension never exits on SHUTDOWN
            rows[contender.key].append(cold_start_once(contender, tmp, upstream_dsn, exit_wait))
    out: Dict[str, Any] = {}
    for contender in contenders:
        got = [r for r in rows[contender.key] if r["ok"]]
        out[contender.key] = {
            "runs": len(rows[contender.key]),
            "failed": len(rows[contender.key]) - len(got),
            "next_ms": median([r["next_ms"] for r in got]),
            "next_ms_min": min([r["next_ms"] for r in got], default=None),
            "register_ms": median([r["register_ms"] for r in got]),
            "cpu_ms": median([r["cpu_ms"] for r in got if r.get("cpu_ms") is not None]),
            "rss_mib": median([r["rss_mib"] for r in got]),
            "exits_on_shutdown": all(r["exited"] for r in rows[contender.key]),
            "samples_next_ms": [round(r["next_ms"], 2) for r in got],
        }
        if not got and rows[contender.key]:
            out[contender.key]["log"] = rows[contender.key][-1].get("log", "")
    return out


# ------------------------------------------------------------------ footprint, ingest, CPU


def _ours_ready(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=max(0.1, deadline - time.monotonic()))
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return True
        except OSError:
            time.sleep(0.005)
        finally:
            conn.close()
    return False


def ingest_once(contender: Contender, tmp: Path, kind: str, settings: Settings, client: str = "raw") -> Dict[str, Any]:
    """Launch, wait until it serves, RSS; then threads × posts over keep-alive; CPU and peak RSS."""
    with FakeUpstream() as upstream, ExtApiStub() as stub:
        env_extra, port = contender.env(upstream.dsn(), tmp)
        assert port is not None
        env = base_env(stub.address)
        env.update(env_extra)
        proc = Launched(contender.path, env, tmp / ("%s-ingest.log" % contender.key),
                        on_spawn=lambda pid: setattr(stub, "watch_pid", pid))
        try:
            if not stub.wait_first_next(10.0):
                return {"ok": False, "why": "no first /event/next", "log": proc.output()[-2000:]}
            ready = _ours_ready(port, 10.0) if contender.kind == "ours" else wait_port(port, 10.0)
            if not ready:
                return {"ok": False, "why": "ingest port %d never served" % port, "log": proc.output()[-2000:]}
            ready_ms = (time.monotonic() - proc.spawn_t) * 1000.0
            cpu_ready = cpu_ms(proc.pid)
            rss_init = status_kib(proc.pid, "VmRSS") or 0
            cpu0 = cpu_ms(proc.pid) or 0.0
            before = len(upstream.requests)
            load = subprocess.run(
                [sys.executable, "-m", "tools.bench_load", "--port", str(port), "--kind", kind,
                 "--dsn", upstream.dsn(), "--threads", str(settings.threads),
                 "--posts", str(settings.posts_per_thread), "--client", client],
                cwd=str(ROOT), capture_output=True, text=True, timeout=120)
            if load.returncode != 0:
                return {"ok": False, "why": "load client failed: %s" % load.stderr[-500:]}
            result = json.loads(load.stdout)
            accepted = int(result["statuses"].get("200", 0))
            delivered_all = upstream.wait_for(lambda reqs: len(reqs) - before >= accepted, timeout=60.0)
            cpu1 = cpu_ms(proc.pid) or 0.0
            hwm = status_kib(proc.pid, "VmHWM") or 0
            delivered = len(upstream.requests) - before
            stub.push_shutdown()
            proc.wait_exit(0.2 if contender.kind == "peer" else 3.0)
        finally:
            proc.kill()
    lat = result["latencies_ms"]
    return {
        "ok": True,
        "posts": result["posts"],
        "statuses": result["statuses"],
        "client_errors": result["errors"],
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else None,
        "throughput_per_s": len(lat) / result["wall_s"] if result["wall_s"] > 0 else None,
        "ready_ms": ready_ms,
        "cpu_ready_ms": cpu_ready,
        "rss_after_init_mib": rss_init / MIB,
        "rss_peak_mib": hwm / MIB,
        "accepted": accepted,
        "delivered": delivered,
        "delivered_all": delivered_all,
        "cpu_per_envelope_ms": (cpu1 - cpu0) / accepted if accepted else None,
    }


def bench_ingest(contender: Contender, tmp: Path, kind: str, settings: Settings, client: str = "raw",
                 runs_n: Optional[int] = None) -> Dict[str, Any]:
    runs = [ingest_once(contender, tmp, kind, settings, client) for _ in range(runs_n or settings.ingest_runs)]
    good = [r for r in runs if r.get("ok")]
    out: Dict[str, Any] = {"runs": len(runs), "failed": len(runs) - len(good), "kind": kind, "client": client}
    for key in ("p50_ms", "p99_ms", "max_ms", "throughput_per_s", "rss_after_init_mib", "rss_peak_mib",
                "cpu_per_envelope_ms", "ready_ms", "cpu_ready_ms"):
        out[key] = median([r[key] for r in good if r.get(key) is not None])
    out["posts"] = sum(r["posts"] for r in good)
    out["client_errors"] = sum(r["client_errors"] for r in good)
    out["accepted"] = sum(r["accepted"] for r in good)
    out["delivered"] = sum(r["delivered"] for r in good)
    statuses: Dict[str, int] = {}
    for r in good:
        for code, count in r["statuses"].items():
            statuses[code] = statuses.get(code, 0) + count
    out["statuses"] = statuses
    if len(good) < len(runs):
        out["errors"] = [{k: r.get(k) for k in ("why", "log")} for r in runs if not r.get("ok")]
    return out


def client_floor(settings: Settings, client: str) -> Dict[str, Any]:
    """The load client against a null server (answers at once): the client's own share of the latency."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tools.bench_load", "--serve-null", "--port", str(port),
                               "--timeout", "120"], cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        if server.stdout is None or server.stdout.readline().strip() != b"ready":
            return {"ok": False}
        load = subprocess.run(
            [sys.executable, "-m", "tools.bench_load", "--port", str(port), "--kind", "sdk", "--threads",
             str(settings.threads), "--posts", str(settings.posts_per_thread), "--client", client],
            cwd=str(ROOT), capture_output=True, text=True, timeout=120)
        result = json.loads(load.stdout)
    finally:
        server.kill()
        server.wait(timeout=5)
    lat = result["latencies_ms"]
    return {"ok": True, "client": client, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "throughput_per_s": len(lat) / result["wall_s"] if result["wall_s"] > 0 else None}


# -------------------------------------------------------------- emulated invocations


def bench_emulated(contender: Contender, tmp: Path, settings: Settings, handler: str, payload: Dict[str, Any],
                   mode: str = "end", delay_s: float = 0.0, idle_close_s: Optional[float] = None) -> Dict[str, Any]:
    """``invocations`` invocations with freezes in the emulator; post-runtime time and delivery per freeze."""
    tunnel = handler.startswith("tunnel_app")
    with FakeUpstream(delay_s=delay_s, idle_close_s=idle_close_s) as upstream:
        env, port = contender.env(upstream.dsn(), tmp, SENTRY_EXT_FLUSH=mode) if contender.kind == "ours" \
            else contender.env(upstream.dsn(), tmp)
        if tunnel:
            runtime_env = {"SENTRY_TUNNEL_URL": "http://127.0.0.1:%d/envelope" % port, "SENTRY_DSN": upstream.dsn()}
        else:
            runtime_env = {"SENTRY_DSN": local_dsn(upstream.dsn(), str(port))}
        results = []
        # The emulator enforces memory_mb on the whole sandbox: 1024 MB, so that no contender (the Node
        # peer is the largest) is ever killed in a benchmark about speed.
        with Emulator(contender.opt, task_root=SAMPLE_FUNCTION, handler=handler, env=env, runtime_env=runtime_env,
                      function_name="bench-function", memory_mb=1024) as emu:
            emu.start()
            for _ in range(settings.invocations):
                results.append(emu.invoke(payload))
                emu.wait_frozen_for(settings.freeze_s)
            shutdown = emu.shutdown()
            ext_name = contender.exe
            log_tail = emu.output(ext_name)[-3000:]
        records = upstream.requests
    # Attribute each upstream envelope to its invocation by the request id inside it.
    invocations = []
    seen = set()
    for result in results:
        body = json.loads(result.response or b"{}") if result.status == "success" else {}
        sent = int(body.get("envelopes", 0)) if tunnel else len(body.get("event_ids", [])) + 1  # + the transaction
        marker = result.request_id.encode()
        before = by_end = 0
        for rec in records:
            if marker not in rec.body or rec.envelope is None:
                continue
            if rec.envelope.items and all(h.get("type") == "trace_metric" for h, _ in rec.envelope.items):
                continue  # the extension's own figures of the request (trace metrics), not the SDK's
            key = (rec.envelope.event_id, result.request_id)
            if key in seen:
                continue
            seen.add(key)
            by_end += 1
            if result.freeze_t is not None and rec.t <= result.freeze_t:
                before += 1
        invocations.append({"status": result.status, "post_runtime_ms": result.post_runtime_ms, "sent": sent,
                            "delivered_before_freeze": before, "delivered_by_end": by_end})
    sent = sum(i["sent"] for i in invocations)
    before = sum(i["delivered_before_freeze"] for i in invocations)
    by_end = sum(i["delivered_by_end"] for i in invocations)
    post = [i["post_runtime_ms"] for i in invocations if i["post_runtime_ms"] is not None]
    return {
        "contender": contender.key, "handler": handler, "payload": payload, "mode": mode if contender.kind == "ours" else None,
        "upstream_delay_ms": delay_s * 1000.0, "upstream_idle_close_s": idle_close_s,
        "invocations": len(invocations), "failed": sum(1 for i in invocations if i["status"] != "success"),
        "post_runtime_median_ms": median(post), "post_runtime_max_ms": max(post) if post else None,
        "sent": sent, "delivered_before_freeze": before, "delivered_by_end": by_end,
        "before_freeze_pct": 100.0 * before / sent if sent else None,
        "by_end_pct": 100.0 * by_end / sent if sent else None,
        "per_freeze_before": [i["delivered_before_freeze"] for i in invocations],
        "per_invocation_sent": [i["sent"] for i in invocations],
        "shutdown_exit": shutdown.exit_codes.get(contender.exe), "shutdown_killed": contender.exe in shutdown.killed,
        "log_tail": log_tail if any(i["status"] != "success" for i in invocations) else "",
    }


# ------------------------------------------------------------------------------------ report


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "–" if value is None else ("%.*f" % (digits, value))


def _met(key: str, value: Optional[float]) -> Optional[bool]:
    if key not in TARGETS or value is None:
        return None
    op, bound = TARGETS[key]
    return value <= bound if op == "<=" else value >= bound


def build_report(data: Dict[str, Any]) -> str:
    """The Markdown tables for the terminal and tools/BENCHMARKS.md."""
    fig, peer = data["figures"], data.get("peer") or {}
    cold = data["details"]["cold_start"]
    floor_ms = fig.get("cold_start_floor_ms")

    def ratio(value: Optional[float]) -> str:
        return "" if value is None or not floor_ms else " (%.2f× floor)" % (value / floor_ms)

    def mark(key: str) -> str:
        met = _met(key, fig.get(key))
        return "" if met is None else ("✅" if met else "❌ missed")

    peer_on = bool(peer) and not data.get("peer_skipped")
    lines = [
        "| figure | ours | %s | target | |" % ("Sentry Node extension" if peer_on else "Node extension (skipped)"),
        "|---|---|---|---|---|",
    ]

    def row(label: str, ours: str, theirs: str, target: str, key: str) -> None:
        lines.append("| %s | %s | %s | %s | %s |" % (label, ours, theirs if peer_on else "–", target, mark(key)))

    row("cold start: spawn → first `/event/next`, ms (median)",
        "%s%s" % (_fmt(fig.get("cold_start_ms")), ratio(fig.get("cold_start_ms"))),
        "%s%s" % (_fmt(peer.get("cold_start_ms")), ratio(peer.get("cold_start_ms"))),
        "≤ 1.5× floor (floor: %s ms)" % _fmt(floor_ms), "cold_start_ratio")
    row("… spawn → `register`, ms", _fmt(fig.get("register_ms")), _fmt(peer.get("register_ms")), "", "")
    if fig.get("cold_start_dev_ms") is not None:
        row("… from the source tree (`bin/` launcher symlinked, `python -I`), ms",
            "%s%s" % (_fmt(fig.get("cold_start_dev_ms")), ratio(fig.get("cold_start_dev_ms"))), "–", "", "")
    row("CPU used until the first `/event/next`, ms", _fmt(fig.get("cpu_to_first_next_ms")),
        _fmt(peer.get("cpu_to_first_next_ms")), "report (floor: %s ms)" % _fmt(cold.get("floor", {}).get("cpu_ms")), "")
    sdk_d, peer_d = data["details"]["ingest_sdk"], data["details"].get("peer_ingest_tunnel") or {}
    row("… spawn → ingest port serving, ms / CPU used by then, ms (background init included)",
        "%s / %s" % (_fmt(sdk_d.get("ready_ms")), _fmt(sdk_d.get("cpu_ready_ms"), 0)),
        "%s / %s" % (_fmt(peer_d.get("ready_ms")), _fmt(peer_d.get("cpu_ready_ms"), 0)), "", "")
    row("RSS after init, MiB", _fmt(fig.get("rss_after_init_mib")), _fmt(peer.get("rss_after_init_mib")),
        "≤ 20", "rss_after_init_mib")
    row("RSS peak, %d-envelope burst, MiB" % data["settings"]["burst"], _fmt(fig.get("rss_peak_burst_mib")),
        _fmt(peer.get("rss_peak_burst_mib")), "≤ 32", "rss_peak_burst_mib")
    burst = data["settings"]["burst"]
    row("ingest latency p50, ms (%d posts, 4 keep-alive threads; ours: SDK route, peer: tunnel)" % burst,
        _fmt(fig.get("ingest_p50_ms"), 2), _fmt(peer.get("ingest_p50_ms"), 2), "≤ 0.5", "ingest_p50_ms")
    row("ingest latency p99, ms", _fmt(fig.get("ingest_p99_ms"), 2), _fmt(peer.get("ingest_p99_ms"), 2),
        "≤ 3", "ingest_p99_ms")
    row("ingest throughput, posts/s", _fmt(fig.get("ingest_throughput_per_s"), 0),
        _fmt(peer.get("ingest_throughput_per_s"), 0), "≥ 3,000", "ingest_throughput_per_s")
    def refused(key: str) -> str:
        got = data["details"].get(key) or {}
        parts = ["%s × %d" % kv for kv in sorted((got.get("statuses") or {}).items()) if kv[0] != "200"]
        if got.get("client_errors"):
            parts.append("%d failed" % got["client_errors"])
        return ", ".join(parts) or "none"

    row("… answers other than 200 during those bursts (all runs)", refused("ingest_sdk"),
        refused("peer_ingest_tunnel") if data["details"].get("peer_ingest_tunnel") else "–", "", "")
    floors = data["details"].get("client_floor") or {}
    row("… the same client against a null server (its own share): p50 / p99 ms, posts/s",
        " / ".join(_fmt((floors.get("raw") or {}).get(k), 2) for k in ("p50_ms", "p99_ms"))
        + ", %s" % _fmt((floors.get("raw") or {}).get("throughput_per_s"), 0), "", "", "")
    row("ingest with `http.client` as the client (as SDKs on it or urllib3 pay): p50 / p99 ms, posts/s",
        "%s / %s, %s" % (_fmt(fig.get("ingest_httpclient_p50_ms"), 2), _fmt(fig.get("ingest_httpclient_p99_ms"), 2),
                         _fmt(fig.get("ingest_httpclient_throughput_per_s"), 0)),
        "", "null server: %s / %s, %s" % (
            _fmt((floors.get("http.client") or {}).get("p50_ms"), 2), _fmt((floors.get("http.client") or {}).get("p99_ms"), 2),
            _fmt((floors.get("http.client") or {}).get("throughput_per_s"), 0)), "")
    row("ingest via the `/envelope` tunnel: p50 / p99 ms, posts/s",
        "%s / %s, %s" % (_fmt(fig.get("ingest_tunnel_p50_ms"), 2), _fmt(fig.get("ingest_tunnel_p99_ms"), 2),
                         _fmt(fig.get("ingest_tunnel_throughput_per_s"), 0)),
        "%s / %s, %s" % (_fmt(peer.get("ingest_tunnel_p50_ms"), 2), _fmt(peer.get("ingest_tunnel_p99_ms"), 2),
                         _fmt(peer.get("ingest_tunnel_throughput_per_s"), 0)), "", "")
    row("CPU per envelope, ingest + forward (1 KiB event), ms", _fmt(fig.get("cpu_per_envelope_ms"), 3),
        _fmt(peer.get("cpu_per_envelope_ms"), 3), "≤ 0.5", "cpu_per_envelope_ms")
    row("post-runtime time per invocation, `end`, ms (median)", _fmt(fig.get("post_runtime_end_ms")),
        "–", "≤ 30", "post_runtime_end_ms")
    row("post-runtime time, `background`, ms (median)", _fmt(fig.get("post_runtime_background_ms")),
        "–", "≤ 2", "post_runtime_background_ms")
    row("post-runtime time, `end`, upstream 80 ms, 3 envelopes, ms", _fmt(fig.get("post_runtime_end_slow_upstream_ms")),
        "–", "≤ 150", "post_runtime_end_slow_upstream_ms")
    row("delivered before the freeze (`end`, %d frozen invocations × 2 scenarios)" % data["settings"]["invocations"],
        _fmt(fig.get("delivery_before_freeze_pct")) + " %", "–", "100 %", "delivery_before_freeze_pct")
    row("delivered by the end (every scenario)", _fmt(fig.get("delivery_by_end_pct")) + " %", "–", "", "")
    row("CPU per function log line, Telemetry record → envelope bytes (tools/bench_logs.py), µs",
        _fmt(fig.get("cpu_per_log_line_us")), "–", "≤ 20", "cpu_per_log_line_us")
    row("function logs end to end, invocations printing 1,000 lines, `SENTRY_EXT_LOGS` on vs off: "
        "CPU per line µs / post-runtime +ms / peak RSS +MiB",
        "%s / %s / %s" % (_fmt(fig.get("cpu_per_log_line_e2e_us")), _fmt(fig.get("log_post_runtime_extra_ms")),
                          _fmt(fig.get("log_rss_extra_mib"), 2)), "–", "≤ 20 µs, ≤ 2 MiB", "cpu_per_log_line_e2e_us")

    out = ["\n".join(lines)]
    side = data["details"].get("side_by_side") or []
    if side:
        sl = ["| tunnel handler, 3 envelopes/invocation | extension | post-runtime ms (median / max) "
              "| delivered before each freeze | by the end |", "|---|---|---|---|---|"]
        for item in side:
            label = "upstream %d ms%s" % (item["upstream_delay_ms"],
                                          ", idle sockets closed after %.1f s" % item["upstream_idle_close_s"]
                                          if item["upstream_idle_close_s"] else "")
            sl.append("| %s | %s | %s / %s | %d/%d (%s %%) %s | %d/%d (%s %%) |" % (
                label, item["label"], _fmt(item["post_runtime_median_ms"]), _fmt(item["post_runtime_max_ms"]),
                item["delivered_before_freeze"], item["sent"], _fmt(item["before_freeze_pct"], 0),
                "" if not item.get("per_freeze_before") else "[%s]" % " ".join(map(str, item["per_freeze_before"])),
                item["delivered_by_end"], item["sent"], _fmt(item["by_end_pct"], 0)))
        out.append("\n".join(sl))
    if data.get("peer_skipped"):
        out.append("Node extension: skipped (%s)." % data["peer_skipped"])
    return "\n\n".join(out)


# ---------------------------------------------------------------------------------------- main


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remote", action="store_true",
                        help="run the remote-upstream suite (tools/bench_remote.py) instead; it takes its own options "
                             "(--peer, --offline, --baseline REV, --quick, --loopback-runs N, --only remote|loopback, "
                             "--out FILE: see tools/bench.py --remote --help)")
    parser.add_argument("--cost", action="store_true",
                        help="run the 128 MB / CPU-per-invocation suite (tools/bench_cost.py) instead; it takes its own "
                             "options (--peer, --offline, --rounds N, --quick, --only 128mb|cpu, --profile FILE, "
                             "--idle-close S, --baseline REV, --ours-env NAME=VALUE, --floor-relay, --out FILE: "
                             "see tools/bench.py --cost --help)")
    parser.add_argument("--quick", action="store_true", help="smoke run: few runs, small bursts (numbers not for publishing)")
    parser.add_argument("--runs", type=int, default=None, help="cold-start rounds (default 15, quick 3)")
    parser.add_argument("--peer", choices=["none", "node"], default="none", help="also run Sentry's Node extension")
    parser.add_argument("--offline", action="store_true", help="never run npm; use build/peer/ if it is there")
    parser.add_argument("--layer", type=Path, default=None,
                        help="layer zip to measure (default: newest dist/sentry-lambda-extension-*.zip, "
                             "else a layer layout assembled from this tree)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default bench-results/bench-<time>.json)")
    return parser.parse_args(argv)


class Lineup:
    """The contenders of one run: the layer, the source tree, the floor and (optionally) the peer."""

    def __init__(self, tmp: Path, opts: argparse.Namespace, python: str) -> None:
        layer_zip = opts.layer or fresh_layer_zip(tmp / "dist", opts.offline, say)
        opt, self.layer_origin = opt_layer(tmp / "layer", layer_zip)
        if layer_zip is not None and opts.layer is None:
            self.layer_origin = ("built now by tools/build_layer.py from this tree (%s)"
                                 % self.layer_origin.split("(")[-1].rstrip(")"))
        self.ours = Contender("ours", "ours (layer, python -IS)", opt, EXTENSION_NAME, "ours")
        self.dev = Contender("ours_dev", "ours (source tree, python -I)", make_opt(tmp / "dev"), EXTENSION_NAME, "ours")
        self.floor = Contender("floor", "floor (tools/floor_extension.py, python -IS)", opt_floor(tmp / "floor", python),
                               "floor-extension", "floor")
        self.peer: Optional[Contender] = None
        self.peer_skipped: Optional[str] = "not requested (use --peer node)"
        self.peer_note = ""
        if opts.peer == "node":
            peer_dir, self.peer_skipped, self.peer_note = peer_opt(tmp / "peer", opts.offline, say)
            if peer_dir is not None:
                self.peer = Contender("peer", "Sentry Node extension", peer_dir, PEER_NAME, "peer")
            if self.peer_skipped:
                say("SKIPPING the Node extension peer: %s" % self.peer_skipped)
        say("layer: %s; interpreter: %s" % (self.layer_origin, python))


def run_cold_start(lineup: Lineup, settings: Settings, tmp: Path) -> Dict[str, Any]:
    with FakeUpstream() as upstream:
        say("cold start: %d alternating rounds ..." % settings.cold_runs)
        cold_set = [lineup.floor, lineup.ours, lineup.dev] + ([lineup.peer] if lineup.peer else [])
        return bench_cold_start(cold_set, settings.cold_runs, tmp, upstream.dsn())


def run_ingest(lineup: Lineup, settings: Settings, tmp: Path) -> Dict[str, Any]:
    say("footprint and ingest: %d × %d posts, %d run(s) each ..."
        % (settings.threads, settings.posts_per_thread, settings.ingest_runs))
    out: Dict[str, Any] = {
        "client_floor": {client: client_floor(settings, client) for client in ("raw", "http.client")},
        "ingest_sdk": bench_ingest(lineup.ours, tmp, "sdk", settings),
        "ingest_sdk_httpclient": bench_ingest(lineup.ours, tmp, "sdk", settings, "http.client", 1),
        "ingest_tunnel": bench_ingest(lineup.ours, tmp, "tunnel", settings),
    }
    if lineup.peer:
        out["peer_ingest_tunnel"] = bench_ingest(lineup.peer, tmp, "tunnel", settings)
    return out


def run_emulated(lineup: Lineup, settings: Settings, tmp: Path) -> Dict[str, Any]:
    say("post-runtime time and delivery: %d invocations, %.1f s freezes ..." % (settings.invocations, settings.freeze_s))
    ours = lineup.ours
    return {
        "end": bench_emulated(ours, tmp, settings, "app.handler", {}, "end"),
        "background": bench_emulated(ours, tmp, settings, "app.handler", {}, "background"),
        "end_slow": bench_emulated(ours, tmp, settings, "app.handler", {"messages": 1}, "end", settings.slow_upstream_s),
    }


def run_side_by_side(lineup: Lineup, settings: Settings, tmp: Path) -> List[Dict[str, Any]]:
    say("side by side, tunnel handler ...")
    side: List[Dict[str, Any]] = []
    variants = [(settings.slow_upstream_s, settings.idle_close_s)] if settings.quick else \
        [(0.0, None), (settings.slow_upstream_s, None), (settings.slow_upstream_s, settings.idle_close_s)]
    for delay_s, idle in variants:
        runs: List[Tuple[Contender, str, str]] = [(lineup.ours, "end", "ours, `end`"),
                                                  (lineup.ours, "background", "ours, `background`")]
        if lineup.peer:
            runs.append((lineup.peer, "", "Sentry Node extension"))
        for contender, mode, label in runs:
            item = bench_emulated(contender, tmp, settings, "tunnel_app.handler", {"envelopes": 3},
                                  mode or "end", delay_s, idle)
            item["label"] = label
            side.append(item)
    return side


def our_figures(details: Dict[str, Any]) -> Dict[str, Any]:
    """The headline figures of our extension (the keys of TARGETS and more)."""
    cold = details["cold_start"]
    sdk, tun, http_client = details["ingest_sdk"], details["ingest_tunnel"], details["ingest_sdk_httpclient"]
    emulated = details["emulated"]
    end_runs = [emulated["end"], emulated["end_slow"]]
    all_runs = [emulated["end"], emulated["background"], emulated["end_slow"]]
    return {
        "cold_start_ms": cold["ours"]["next_ms"],
        "cold_start_floor_ms": cold["floor"]["next_ms"],
        "cold_start_ratio": _ratio(cold["ours"]["next_ms"], cold["floor"]["next_ms"]),
        "cold_start_dev_ms": cold["ours_dev"]["next_ms"],
        "register_ms": cold["ours"]["register_ms"],
        "cpu_to_first_next_ms": cold["ours"]["cpu_ms"],
        "rss_after_init_mib": sdk["rss_after_init_mib"],
        "rss_peak_burst_mib": sdk["rss_peak_mib"],
        "ingest_p50_ms": sdk["p50_ms"],
        "ingest_p99_ms": sdk["p99_ms"],
        "ingest_throughput_per_s": sdk["throughput_per_s"],
        "ingest_tunnel_p50_ms": tun["p50_ms"],
        "ingest_tunnel_p99_ms": tun["p99_ms"],
        "ingest_tunnel_throughput_per_s": tun["throughput_per_s"],
        "ingest_httpclient_p50_ms": http_client["p50_ms"],
        "ingest_httpclient_p99_ms": http_client["p99_ms"],
        "ingest_httpclient_throughput_per_s": http_client["throughput_per_s"],
        "cpu_per_envelope_ms": sdk["cpu_per_envelope_ms"],
        "post_runtime_end_ms": emulated["end"]["post_runtime_median_ms"],
        "post_runtime_background_ms": emulated["background"]["post_runtime_median_ms"],
        "post_runtime_end_slow_upstream_ms": emulated["end_slow"]["post_runtime_median_ms"],
        "delivery_before_freeze_pct": _delivered_pct(end_runs, "delivered_before_freeze"),
        "delivery_by_end_pct": _delivered_pct(all_runs, "delivered_by_end"),
        "cpu_per_log_line_us": details["logs"]["cpu_per_log_line_us"],
        "cpu_per_log_line_e2e_us": details["logs_e2e"]["cpu_per_log_line_e2e_us"],
        "log_post_runtime_extra_ms": details["logs_e2e"]["log_post_runtime_extra_ms"],
        "log_rss_extra_mib": details["logs_e2e"]["log_rss_extra_mib"],
    }


def peer_figures(details: Dict[str, Any]) -> Dict[str, Any]:
    """The same figures for the Node extension peer (None where it has no counterpart)."""
    cold = details["cold_start"]
    pc, pi = cold["peer"], details["peer_ingest_tunnel"]
    peer_side = [s for s in details["side_by_side"] if s["contender"] == "peer"]
    figures: Dict[str, Any] = {key: None for key in FIGURE_KEYS}
    figures.update({
        "cold_start_ms": pc["next_ms"],
        "cold_start_floor_ms": cold["floor"]["next_ms"],
        "cold_start_ratio": _ratio(pc["next_ms"], cold["floor"]["next_ms"]),
        "register_ms": pc["register_ms"],
        "cpu_to_first_next_ms": pc["cpu_ms"],
        "rss_after_init_mib": pi["rss_after_init_mib"],
        "rss_peak_burst_mib": pi["rss_peak_mib"],
        "ingest_p50_ms": pi["p50_ms"], "ingest_p99_ms": pi["p99_ms"], "ingest_throughput_per_s": pi["throughput_per_s"],
        "ingest_tunnel_p50_ms": pi["p50_ms"], "ingest_tunnel_p99_ms": pi["p99_ms"],
        "ingest_tunnel_throughput_per_s": pi["throughput_per_s"],
        "cpu_per_envelope_ms": pi["cpu_per_envelope_ms"],
        "delivery_before_freeze_pct": _delivered_pct(peer_side, "delivered_before_freeze"),
        "delivery_by_end_pct": _delivered_pct(peer_side, "delivered_by_end"),
    })
    return figures


def print_summary(data: Dict[str, Any], report: str, out: Path) -> None:
    m = data["machine"]
    print("%s\n\nMachine: %s × %s, %s MiB, Python %s, Linux %s, %s, load average %s → %s. Layer: %s.%s\n"
          "Command: `%s` (%.0f s)\n"
          % (report, m["nproc"], m["cpu"], m["mem_mib"], m["python"], m["kernel"], m["date"], m["loadavg"],
             m["loadavg_end"], data["layer"], (" Peer: %s." % data["peer_note"]) if data["peer"] else "",
             data["command"], data["elapsed_s"]))
    missed = [key for key, t in data["targets"].items() if t["met"] is False]
    print("targets missed: %s" % (", ".join(missed) or "none"))
    print("JSON: %s" % out)


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--remote" in args:  # the remote-upstream suite lives in its own module, with its own options
        from tools import bench_remote

        return bench_remote.main([a for a in args if a != "--remote"], script="tools/bench.py --remote")
    if "--cost" in args:  # what Sentry costs a 128 MB function: tools/bench_cost.py, with its own options
        from tools import bench_cost

        return bench_cost.main([a for a in args if a != "--cost"], script="tools/bench.py --cost")
    opts = parse_args(args)
    settings = Settings(opts.quick, opts.runs)
    started = time.monotonic()
    machine_info = machine()  # load average at the start, before our own load
    python = sys.executable

    with tempfile.TemporaryDirectory(prefix="sentry-ext-bench-") as tmp_name:
        tmp = Path(tmp_name)
        lineup = Lineup(tmp, opts, python)
        details: Dict[str, Any] = {"cold_start": run_cold_start(lineup, settings, tmp)}
        details.update(run_ingest(lineup, settings, tmp))
        details["emulated"] = run_emulated(lineup, settings, tmp)
        details["side_by_side"] = run_side_by_side(lineup, settings, tmp)
        say("function logs: parse + batch + serialize, 1,000 lines ...")
        details["logs"] = bench_log_lines(1000, 5 if settings.quick else 30)
        say("function logs end to end: invocations printing 1,000 lines, SENTRY_EXT_LOGS off against on ...")
        details["logs_e2e"] = bench_function_logs(1000, settings.invocations, lineup.ours.opt)

    figures = our_figures(details)
    machine_info["loadavg_end"] = loadavg()
    data: Dict[str, Any] = {
        "command": command_line("tools/bench.py", args),
        "machine": machine_info,
        "quick": settings.quick,
        "settings": {"cold_runs": settings.cold_runs, "ingest_runs": settings.ingest_runs,
                     "burst": settings.threads * settings.posts_per_thread, "threads": settings.threads,
                     "invocations": settings.invocations, "freeze_s": settings.freeze_s},
        "layer": lineup.layer_origin,
        "peer_note": lineup.peer_note,
        "peer_skipped": lineup.peer_skipped,
        "figures": figures,
        "peer": peer_figures(details) if lineup.peer else {},
        "targets": {key: {"target": "%s %s" % TARGETS[key], "value": figures.get(key), "met": _met(key, figures.get(key))}
                    for key in TARGETS},
        "details": details,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    report = build_report(data)
    out = save_results(data, opts.out, "bench", opts.quick)
    print_summary(data, report, out)
    return 0


def _ratio(value: Optional[float], floor: Optional[float]) -> Optional[float]:
    return value / floor if value and floor else None


def _delivered_pct(runs: List[Dict[str, Any]], key: str) -> Optional[float]:
    return _pct(sum(r[key] for r in runs), sum(r["sent"] for r in runs))


def _pct(part: int, whole: int) -> Optional[float]:
    return 100.0 * part / whole if whole else None


if __name__ == "__main__":
    sys.exit(main())
