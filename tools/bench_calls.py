"""Calls per thawed invocation of our extension, per thread and per function (issue 22).

    .venv/bin/python tools/bench_calls.py [--tree DIR] [--short N] [--long N] [--top N] [--closed]

Where the CPU of an invocation goes, counted rather than sampled. The extension (this tree, or the
source tree ``--tree`` names, e.g. a ``git worktree`` of an older revision; in ``adaptive``) runs in two sandboxes of the CPU suite of ``bench_cost.py``: HTTPS upstream 80 ms
away, the sample function's 3 envelopes per invocation, a freeze after each. Connections are kept,
or closed in every freeze with ``--closed``. It runs under a counter: ``SENTRY_EXT_PYTHON`` points at a
wrapper that starts the interpreter with ``sys.setprofile`` and ``threading.setprofile`` counting
every Python and C function call by thread. The counts are written when the extension exits at
SHUTDOWN. The two sandboxes differ only in their number of invocations (``--short``, ``--long``),
so the difference over ``long - short`` invocations is what one thawed invocation calls: start-up
and SHUTDOWN cancel out.

The counter slows the extension down several times over, so it gives calls, not time. Time comes
from ``tools/bench.py --cost --only cpu`` (``perf stat``, without the counter).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench_cost import IDLE_CLOSE_S, Contender, run_sandbox  # noqa: E402
from tools.sandbox import EXTENSION_NAME, make_opt  # noqa: E402
from tools.tlsutil import self_signed  # noqa: E402

# Started by the wrapper in place of ``python -I -c <launcher code> lib name stand-in``: counts every
# call by thread, runs the launcher's code, and writes the counts when the extension calls os._exit.
BOOT = '''import collections, json, os, sys, threading
counts = collections.Counter()
def profile(frame, event, arg):
    if event == "call":
        code = frame.f_code
        counts[(threading.current_thread().name, code.co_filename.rsplit("/", 1)[-1] + ":" + code.co_name)] += 1
    elif event == "c_call":
        counts[(threading.current_thread().name, "C:" + getattr(arg, "__qualname__", repr(arg)))] += 1
real_exit = os._exit
def counted_exit(code):
    sys.setprofile(None)
    threading.setprofile(None)
    with open(os.environ["SENTRY_EXT_CALLS_OUT"], "w") as out:
        json.dump([[thread, name, n] for (thread, name), n in counts.items()], out)
    real_exit(code)
os._exit = counted_exit
args = sys.argv[1:]
while args and args[0] != "-c":
    args.pop(0)  # the launcher's -I/-IBS: this file is already the script
sys.argv = ["-c"] + args[2:]
threading.setprofile(profile)
sys.setprofile(profile)
exec(compile(args[1], "<launcher>", "exec"), {"__name__": "__main__"})
'''
THREADS = (("handler", re.compile(r"Thread-\d+")), ("senders", re.compile(r"sentry-ext-sender")),
           ("telemetry", re.compile(r"sentry-ext-telemetry")), ("main", re.compile(r"MainThread")))

Counts = Dict[Tuple[str, str], int]


def thread_group(name: str) -> str:
    """The row a thread's calls go to: the SDK connections' handlers, the senders, the Telemetry
    listener, the main thread, or the thread's own name."""
    for group, pattern in THREADS:
        if pattern.match(name):
            return group
    return name


def count_calls(tmp: Path, invocations: int, closed: bool, tree: Optional[Path] = None) -> Counts:
    """The calls of one sandbox of ``invocations`` invocations, SHUTDOWN included, by (thread group, function)."""
    tmp.mkdir(parents=True)
    cert, key = self_signed(tmp / "tls")
    boot, wrapper, out = tmp / "boot.py", tmp / "python-counted", tmp / ("calls-%d.json" % invocations)
    boot.write_text(BOOT)
    wrapper.write_text('#!/bin/sh\nexec "%s" "%s" "$@"\n' % (sys.executable, boot))
    wrapper.chmod(0o755)
    if tree is None:
        opt = make_opt(tmp / "opt")
    else:  # that tree's launcher, as make_opt links this one's
        opt = tmp / "opt"
        (opt / "extensions").mkdir(parents=True)
        (opt / "extensions" / EXTENSION_NAME).symlink_to(tree.resolve() / "bin" / EXTENSION_NAME)
    contender = Contender("counted", "ours", "ours", opt, EXTENSION_NAME,
                          "adaptive", {"SENTRY_EXT_PYTHON": str(wrapper), "SENTRY_EXT_CALLS_OUT": str(out)})
    run = run_sandbox(contender, tmp, cert, key, invocations, None, idle_close_s=IDLE_CLOSE_S if closed else None)
    if run["delivered"] != run["expected"]:
        raise RuntimeError("delivered %s of %s envelopes" % (run["delivered"], run["expected"]))
    counts: Counts = collections.Counter()
    for thread, name, n in json.loads(out.read_text()):
        counts[(thread_group(thread), name)] += n
    return counts


def per_invocation(short: Counts, long: Counts, invocations: int) -> Dict[Tuple[str, str], float]:
    return {key: (n - short.get(key, 0)) / invocations for key, n in long.items() if n != short.get(key, 0)}


def build_report(calls: Dict[Tuple[str, str], float], top: int) -> str:
    rows: Dict[str, List[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for (group, name), n in calls.items():
        rows[group][1 if name.startswith("C:") else 0] += n
    lines = ["| thread | Python calls | C calls |", "|---|---|---|"]
    for group, (python, c) in sorted(rows.items(), key=lambda item: -sum(item[1])):
        if python + c >= 0.5:
            lines.append("| %s | %.0f | %.0f |" % (group, python, c))
    python = sum(n for (_, name), n in calls.items() if not name.startswith("C:"))
    lines.append("| all | %.0f | %.0f |" % (python, sum(calls.values()) - python))
    lines += ["", "| calls | thread | function |", "|---|---|---|"]
    for (group, name), n in sorted(calls.items(), key=lambda item: -item[1])[:top]:
        lines.append("| %.1f | %s | %s |" % (n, group, name))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, help="the source tree to count (default: this one)")
    parser.add_argument("--short", type=int, default=10, help="invocations of the first sandbox (default 10)")
    parser.add_argument("--long", type=int, default=30, help="invocations of the second sandbox (default 30)")
    parser.add_argument("--top", type=int, default=30, help="functions listed (default 30)")
    parser.add_argument("--closed", action="store_true", help="the upstream closes idle connections in every freeze")
    args = parser.parse_args(argv)
    if not 1 <= args.short < args.long:
        parser.error("--short must be at least 1 and below --long")
    with tempfile.TemporaryDirectory(prefix="sentry-ext-bench-calls-") as tmp:
        short = count_calls(Path(tmp) / "short", args.short, args.closed, args.tree)
        long = count_calls(Path(tmp) / "long", args.long, args.closed, args.tree)
    calls = per_invocation(short, long, args.long - args.short)
    print("Calls per thawed invocation (invocations %d-%d; upstream HTTPS 80 ms away, connections %s):\n"
          % (args.short + 1, args.long, "closed in every freeze" if args.closed else "kept"))
    print(build_report(calls, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
