"""Every optimisation against the same tree without it (issue 21): a base revision and variants of
it (each one commit removing one mechanism), measured interleaved round by round.

    .venv/bin/python tools/bench_variants.py [--base REV] --variant NAME=REV [--variant NAME=REV ...]
        [--rounds N] [--cold-per-round N] [--ca certifi|self] [--only startup|cpu] [--cpu-share cores|128mb]
        [--quick] [--out FILE]

Each tree is ``git archive``d (tools/bench_remote.py ``baseline_opt``), built into a layer by its own
``tools/build_layer.py`` (shipped bytecode for this interpreter, the pinned urllib3 and certifi from
``build/wheels``; without those wheels the layer is assembled from the tree with this interpreter's
urllib3 and certifi, as tools/bench.py does offline) and run from an /opt as Lambda runs it
(``python -IBS``). Every round measures every tree, on whole cores (no quota), in an order that is
reversed every other round; the existing benchmark code takes each figure:

- cold start: tools/bench.py ``cold_start_once``: spawn → first ``/event/next`` (ms) and the CPU
  used by then (schedstat), ``--cold-per-round`` samples per tree and round;
- footprint and the loopback burst: tools/bench_remote.py ``loopback_ingest`` (tools/bench.py's
  ingest run): RSS when the ingest first answers, spawn → ingest serving and the CPU used by then
  (the background init), then 4 threads × 500 posts: posts/s and CPU per envelope;
- CPU per thawed invocation: tools/bench_cost.py ``run_sandbox`` (the sample function in the
  emulator, ``adaptive``, HTTPS upstream 80 ms away closing connections idle for 0.3 s, so each
  0.5 s freeze outlasts them), counted as that suite counts it: the extension's CPU over the
  thawed invocations after the first ``CPU_WARM`` (``perf stat`` where there is one, else /proc). ``--ca certifi`` (default) has the
  extension trust certifi's bundle with the upstream's certificate appended, as a Lambda loads the
  whole bundle (loading it is part of what a TLS context costs); ``--ca self``: the certificate
  alone, as tools/bench_cost.py does. ``--cpu-share 128mb`` runs these sandboxes in tools/bench_cost.py's
  CPU-quota cgroup of a 128 MB function instead (root only). Billed: median of function +
  post-runtime over invocations 6-20.
``--only startup`` measures the first two, ``--only cpu`` the last.

Prints a Markdown table (medians; for each variant its difference from the base, variant − base, so
a positive cost is what the removed mechanism saved) and what the thresholds say: keep a mechanism
that saves at least 1 ms of cold start (spawn → first ``/event/next``) or of its CPU, or 1 ms of CPU
per invocation, or 0.5 MiB of RSS after init. JSON in ``bench-results/variants-<time>.json``.
``--quick`` is a smoke run (one round, one cold sample, 50 posts per thread; numbers not for use).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

if __package__ in (None, ""):  # run as a script: make ``tools`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import bench, bench_cost, bench_remote  # noqa: E402
from tools.bench_support import command_line, loadavg, machine, opt_layer, save_results, say  # noqa: E402
from tools.cgroup_cpu import CpuQuota, lambda_quota_us  # noqa: E402
from tools.fake_upstream import FakeUpstream  # noqa: E402
from tools.sandbox import EXTENSION_NAME, ROOT  # noqa: E402
from tools.stats import median  # noqa: E402
from tools.tlsutil import self_signed  # noqa: E402

WHEELS = ROOT / "build" / "wheels"

#: (figure, heading, digits): every figure of the table, in its order.
FIGURES: Tuple[Tuple[str, str, int], ...] = (
    ("cold_start_ms", "cold start ms", 1),
    ("cold_cpu_ms", "CPU to first next ms", 1),
    ("rss_after_init_mib", "RSS after init MiB", 2),
    ("ready_ms", "ingest serving ms", 0),
    ("cpu_ready_ms", "CPU by then ms", 0),
    ("cpu_per_invocation_ms", "CPU per thawed invocation ms", 2),
    ("handshakes_per_invocation", "TLS handshakes / invocation", 2),
    ("resumed_per_invocation", "… resumed", 2),
    ("billed_ms", "billed ms", 0),
    ("burst_posts_per_s", "burst posts/s", 0),
    ("cpu_per_envelope_ms", "CPU per envelope ms", 3),
)
#: figure -> the least a mechanism must save there to be kept (issue 21).
THRESHOLDS: Dict[str, float] = {
    "cold_start_ms": 1.0, "cold_cpu_ms": 1.0, "cpu_per_invocation_ms": 1.0, "rss_after_init_mib": 0.5,
}


class Tree:
    """One revision under test, laid out as a layer in /opt."""

    def __init__(self, key: str, rev: str, opt: Path, subject: str, origin: str) -> None:
        self.key, self.rev, self.opt, self.subject, self.origin = key, rev, opt, subject, origin
        self.samples: Dict[str, List[Optional[float]]] = {figure: [] for figure, _, _ in FIGURES}

    @property
    def label(self) -> str:
        return "%s (`%s`, %s)" % (self.key, self.rev, self.subject.split()[0] if self.subject else "?")


def tree_opt(base: Path, rev: str) -> Tuple[Path, str, str]:
    """(opt, "commit subject", how the layer was made) for ``rev``, built under ``base``."""
    _, subject = bench_remote.baseline_opt(base, rev)  # git archive into base/src
    src = base / "src"
    from tools import build_layer

    if all((WHEELS / dep.wheel).exists() for dep in build_layer.VENDORED):
        proc = subprocess.run([sys.executable, "tools/build_layer.py", "--out", str(base / "dist"), "--wheels",
                               str(WHEELS), "--bytecode", "%d.%d" % sys.version_info[:2], "--python", sys.executable],
                              cwd=str(src), capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError("build_layer failed for %s: %s" % (rev, (proc.stderr or proc.stdout)[-1000:]))
        opt, origin = opt_layer(base / "layer", sorted((base / "dist").glob("*.zip"))[-1])
        return opt, subject, "layer built by its tools/build_layer.py (%s" % origin.split("(")[-1]
    opt, origin = opt_layer(base / "layer", None, root=src)
    return opt, subject, origin


def measure_round(trees: List[Tree], order: List[Tree], tmp: Path, dsn: str, cert: Path, key: Path,
                  ca: Optional[Path], cold_per_round: int, quick: bool, only: Optional[str] = None,
                  share_128mb: bool = False) -> None:
    """One round: every figure of every tree, in ``order``; samples appended to each tree."""
    if only != "cpu":
        measure_startup(trees, order, tmp, dsn, cold_per_round, quick)
    if only != "startup":
        measure_cpu(order, tmp, cert, key, ca, share_128mb)


def measure_startup(trees: List[Tree], order: List[Tree], tmp: Path, dsn: str, cold_per_round: int,
                    quick: bool) -> None:
    """Cold starts, then the footprint and the loopback burst, of every tree."""
    for index in range(cold_per_round):
        for tree in (order if index % 2 == 0 else list(reversed(order))):
            row = bench.cold_start_once(bench.Contender(tree.key, tree.key, tree.opt, EXTENSION_NAME, "ours"),
                                        tmp, dsn, 3.0)
            tree.samples["cold_start_ms"].append(row.get("next_ms"))
            tree.samples["cold_cpu_ms"].append(row.get("cpu_ms"))
    contenders = [bench_remote.Contender(t.key, t.key, t.opt, EXTENSION_NAME, "ours") for t in order]
    burst = bench_remote.loopback_ingest(contenders, tmp, 1, quick)
    for tree in trees:
        got = burst.get(tree.key, {})
        for figure, source in (("rss_after_init_mib", "rss_after_init_mib"), ("ready_ms", "ready_ms"),
                               ("cpu_ready_ms", "cpu_ready_ms"), ("burst_posts_per_s", "throughput_per_s"),
                               ("cpu_per_envelope_ms", "cpu_per_envelope_ms")):
            tree.samples[figure].append(got.get(source))


def measure_cpu(order: List[Tree], tmp: Path, cert: Path, key: Path, ca: Optional[Path], share_128mb: bool) -> None:
    """One sandbox per tree, counted as the cost suite counts it (``bench_cost``: the extension's
    CPU over the thawed invocations after the first ``CPU_WARM``, by ``perf stat`` where there is
    one): CPU per thawed invocation, handshakes, billed time."""
    warm, last = bench_cost.CPU_WARM, bench_cost.CPU_WARM + bench_cost.CPU_COUNTED
    for tree in order:
        say("CPU per invocation: %s ..." % tree.key)
        contender = bench_cost.Contender(tree.key, tree.key, "ours", tree.opt, EXTENSION_NAME, "adaptive")
        if share_128mb:
            with CpuQuota(lambda_quota_us(bench_cost.MEMORY_MB, bench_cost.PERIOD_US), bench_cost.PERIOD_US) as quota:
                run = bench_cost.run_sandbox(contender, tmp, cert, key, last, quota, count_from=warm, ca_file=ca)
        else:
            run = bench_cost.run_sandbox(contender, tmp, cert, key, last, None, count_from=warm, ca_file=ca)
        rows = run["rows"]
        ok = len(rows) == last and not run["failed"]
        tree.samples["cpu_per_invocation_ms"].append(
            bench_cost.counted_per_invocation([run])["cpu_per_invocation_ms"] if ok else None)
        thawed = rows[warm:] if ok else []  # the counted invocations
        for figure, field in (("handshakes_per_invocation", "handshakes"), ("resumed_per_invocation", "resumed")):
            tree.samples[figure].append(sum(r[field] for r in thawed) / len(thawed) if thawed else None)
        tree.samples["billed_ms"].append(median([r.get("billed_ms") for r in thawed]))


def summarize(trees: List[Tree]) -> Dict[str, Any]:
    """Medians per tree, each variant's difference from the base (the first tree), and the verdicts."""
    medians = {t.key: {f: median([v for v in t.samples[f] if v is not None]) for f, _, _ in FIGURES} for t in trees}
    base = medians[trees[0].key]
    deltas: Dict[str, Dict[str, Optional[float]]] = {}
    verdicts: Dict[str, Dict[str, Any]] = {}
    for tree in trees[1:]:
        own = medians[tree.key]
        deltas[tree.key] = {f: (own[f] - base[f] if own[f] is not None and base[f] is not None else None)
                            for f, _, _ in FIGURES}
        met = [f for f, bound in THRESHOLDS.items() if (deltas[tree.key][f] or 0.0) >= bound]
        verdicts[tree.key] = {"keep": bool(met), "saves_enough_on": met}
    failed = {t.key: {f: sum(1 for v in t.samples[f] if v is None) for f, _, _ in FIGURES} for t in trees}
    return {"medians": medians, "deltas": deltas, "verdicts": verdicts, "failed_samples": failed}


def _fmt(value: Optional[float], digits: int, sign: bool = False) -> str:
    return "–" if value is None else ("%+.*f" if sign else "%.*f") % (digits, value)


def build_report(data: Dict[str, Any]) -> str:
    heads = [heading for _, heading, _ in FIGURES]
    lines = ["| tree | %s | thresholds say |" % " | ".join(heads), "|---|%s---|" % ("---|" * len(heads))]
    for tree in data["trees"]:
        key = tree["key"]
        cells = []
        for figure, _, digits in FIGURES:
            cell = _fmt(data["medians"][key][figure], digits)
            if key in data["deltas"]:
                cell += " (%s)" % _fmt(data["deltas"][key][figure], digits, sign=True)
            cells.append(cell)
        verdict = data["verdicts"].get(key)
        say_ = "base" if verdict is None else ("keep (%s)" % ", ".join(verdict["saves_enough_on"])
                                               if verdict["keep"] else "remove")
        lines.append("| %s | %s | %s |" % (tree["label"], " | ".join(cells), say_))
    return "\n".join(lines)


def parse_variant(text: str) -> Tuple[str, str]:
    name, sep, rev = text.partition("=")
    if not sep or not name or not rev:
        raise argparse.ArgumentTypeError("--variant takes NAME=REV, got %r" % text)
    return name, rev


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the revision every variant is compared with (default HEAD)")
    parser.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="NAME=REV",
                        help="a revision without one mechanism (repeatable)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, quick 1)")
    parser.add_argument("--cold-per-round", type=int, default=None, help="cold starts per tree and round (default 3)")
    parser.add_argument("--ca", choices=["certifi", "self"], default="certifi",
                        help="what the extension trusts: certifi's bundle plus the upstream's certificate (default), "
                             "or the certificate alone")
    parser.add_argument("--only", choices=["startup", "cpu"], default=None,
                        help="only the cold start, footprint and burst (startup) or only the invocations (cpu)")
    parser.add_argument("--cpu-share", choices=["cores", "128mb"], default="cores",
                        help="the invocations on whole cores (default) or at a 128 MB function's CPU share")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 1 cold start, small bursts")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default bench-results/variants-<time>.json)")
    opts = parser.parse_args(args)
    if not opts.variant:
        parser.error("give at least one --variant NAME=REV")
    names = ["base"] + [name for name, _ in opts.variant]
    if len(set(names)) != len(names):
        parser.error("variant names must be distinct and not 'base'")
    share_128mb = opts.cpu_share == "128mb" and opts.only != "startup"
    why_not = CpuQuota.unavailable() if share_128mb else None
    if why_not is not None:
        parser.error("--cpu-share 128mb: %s" % why_not)
    rounds = opts.rounds or (1 if opts.quick else 5)
    cold_per_round = opts.cold_per_round or (1 if opts.quick else 3)
    started = time.monotonic()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="sentry-ext-bench-variants-") as tmp_name:
        tmp = Path(tmp_name)
        cert, key = self_signed(tmp / "tls")
        ca: Optional[Path] = None
        if opts.ca == "certifi":
            import certifi

            ca = tmp / "tls" / "certifi-and-upstream.pem"
            ca.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + cert.read_bytes())
        trees: List[Tree] = []
        for name, rev in [("base", opts.base)] + list(opts.variant):
            say("building %s (%s) ..." % (name, rev))
            opt, subject, origin = tree_opt(tmp / ("tree-%d" % len(trees)), rev)
            trees.append(Tree(name, rev, opt, subject, origin))
        with FakeUpstream() as upstream:
            for round_no in range(rounds):
                order = trees if round_no % 2 == 0 else list(reversed(trees))
                say("round %d of %d: %s" % (round_no + 1, rounds, ", ".join(t.key for t in order)))
                measure_round(trees, order, tmp, upstream.dsn(), cert, key, ca, cold_per_round, opts.quick, opts.only,
                              share_128mb)
    data: Dict[str, Any] = {
        "command": command_line("tools/bench_variants.py", args), "machine": info, "quick": opts.quick,
        "rounds": rounds, "cold_per_round": cold_per_round, "ca": opts.ca, "only": opts.only,
        "cpu_share": opts.cpu_share,
        "trees": [{"key": t.key, "rev": t.rev, "subject": t.subject, "label": t.label, "layer": t.origin}
                  for t in trees],
        "samples": {t.key: t.samples for t in trees},
        "thresholds": THRESHOLDS,
    }
    data.update(summarize(trees))
    data["machine"]["loadavg_end"] = loadavg()
    data["elapsed_s"] = round(time.monotonic() - started, 1)
    report = build_report(data)
    out = save_results(data, opts.out, "variants", opts.quick)
    m = data["machine"]
    print("%s\n\nMachine: %s × %s, Python %s, Linux %s, %s, load average %s → %s. %d round(s), %d cold start(s) "
          "per tree and round; CA: %s; invocations on %s.\nCommand: `%s` (%.0f s)\n"
          % (report, m["nproc"], m["cpu"], m["python"], m["kernel"], m["date"], m["loadavg"], m["loadavg_end"],
             rounds, cold_per_round, opts.ca, "a 128 MB share" if share_128mb else "whole cores", data["command"],
             data["elapsed_s"]))
    print("JSON: %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
