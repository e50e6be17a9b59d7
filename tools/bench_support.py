"""Building blocks of ``tools/bench.py`` (and bench_remote/bench_cost): launched extension processes,
the /opt directories of every contender (the Node peer's included), the machine's description and
progress lines. The Extensions API stub is ``tools/ext_api_stub.py``, the /proc readers ``tools/procfs.py``.

Only loopback is used, and only processes started here are ever signalled (each leads its own
process group, and is signalled through that group while it is unreaped).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from tools.sandbox import EXTENSION_NAME, LAUNCHER, ROOT

PEER_NAME = "sentry-extension"  # Sentry's Node extension registers under this fixed name
PEER_PORT = 9000                # ... and listens on this fixed port
PEER_PACKAGE = "@sentry/aws-serverless"


# ------------------------------------------------------------------------ launched processes


class Launched:
    """An extension executable started as Lambda starts it: exec'd from ``<opt>/extensions``."""

    def __init__(self, path: Path, env: Dict[str, str], log_path: Path, on_spawn: Optional[Callable[[int], None]] = None) -> None:
        self.path = path
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.spawn_t = time.monotonic()
        self.popen = subprocess.Popen([str(path)], cwd=str(path.parent.parent), env=env, stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        self.pid = self.popen.pid
        if on_spawn is not None:
            on_spawn(self.pid)

    def wait_exit(self, timeout: float) -> Optional[int]:
        try:
            return self.popen.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the process group this process leads (only while it is unreaped), then reap it."""
        if self.popen.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._log.close()

    def output(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""


def base_env(api_address: str, function_name: str = "bench-function") -> Dict[str, str]:
    """The environment Lambda gives an extension (as tools/emulator/processes.py builds it)."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ") if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update({
        "AWS_LAMBDA_RUNTIME_API": api_address,
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
    })
    return env


def wait_port(port: int, timeout: float) -> bool:
    """Poll until 127.0.0.1:``port`` accepts a connection (bounded, 5 ms apart)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.005)
    return False


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (SO_REUSEADDR, as servers bind:
    connections of an earlier run lingering in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# ------------------------------------------------------------------------------ /opt layouts


def opt_floor(base: Path, python: str, script: str = "floor_extension.py", name: str = "floor-extension") -> Path:
    """``<base>/opt/extensions/<name>``: ``tools/<script>`` (the cold-start floor, or the CPU suite's
    floor_relay.py) with ``#!<python> -IS``."""
    opt = base / "opt"
    (opt / "extensions").mkdir(parents=True, exist_ok=True)
    source = (ROOT / "tools" / script).read_text()
    target = opt / "extensions" / name
    target.write_text("#!%s -IS\n%s" % (python, source))
    target.chmod(0o755)
    return opt


def fresh_layer_zip(out_dir: Path, offline: bool, log: Callable[[str], None]) -> Optional[Path]:
    """A layer zip of this tree built now by tools/build_layer.py (bytecode for this interpreter only),
    or None (no build_layer, or its pinned wheels are not cached and ``offline``, or the build failed)."""
    try:
        from tools import build_layer
    except ImportError:
        return None
    try:
        wheels = build_layer.DEFAULT_WHEELS
        if offline and not all((Path(wheels) / dep.wheel).exists() for dep in build_layer.VENDORED):
            log("layer: build_layer's pinned wheels are not cached in %s (--offline): assembling instead" % wheels)
            return None
        result = build_layer.build(out_dir, wheels, "%d.%d" % sys.version_info[:2], [sys.executable])
        return Path(result.path)
    except Exception as exc:  # another tool's failure must not stop the benchmark
        log("layer: tools/build_layer.py failed (%s): assembling instead" % exc)
        return None


def opt_layer(base: Path, layer_zip: Optional[Path] = None, root: Path = ROOT) -> Tuple[Path, str]:
    """An /opt as the layer lays it out (the launcher then runs ``python -IS``); returns (opt, origin).

    From ``layer_zip`` when given, else assembled from the tree at ``root`` (default: this one):
    ``extensions/<name>`` (the launcher), ``sentry-lambda-extension/`` with ``sentry_ext``, ``urllib3``
    and ``certifi`` copied from the interpreter's site-packages, byte-compiled as a layer build would
    ship them.
    """
    opt = base / "opt"
    if layer_zip is not None:
        with zipfile.ZipFile(layer_zip) as zf:
            zf.extractall(opt)
        for path in (opt / "extensions").iterdir():
            path.chmod(0o755)
        has_pyc = any(opt.rglob("*.pyc"))
        shown = os.path.relpath(layer_zip, ROOT) if str(layer_zip).startswith(str(ROOT)) else layer_zip.name
        return opt, "%s (%s .pyc)" % (shown, "with" if has_pyc else "no")
    import certifi
    import urllib3

    (opt / "extensions").mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / LAUNCHER.relative_to(ROOT), opt / "extensions" / EXTENSION_NAME)
    lib = opt / "sentry-lambda-extension"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(root / "sentry_ext", lib / "sentry_ext", ignore=ignore)
    for module in (urllib3, certifi):
        src = Path(module.__file__).parent  # type: ignore[arg-type]
        shutil.copytree(src, lib / src.name, ignore=ignore)
    import compileall

    compileall.compile_dir(str(lib), quiet=1, workers=1)
    return opt, "assembled from the source tree (byte-compiled)"


# ---------------------------------------------------------------------------- the Node peer


def find_peer(cache: Path, offline: bool, log: Callable[[str], None]) -> Tuple[Optional[Path], str]:
    """``build/lambda-extension`` of ``@sentry/aws-serverless`` (npm pack into ``cache``); (dir, note)."""
    if shutil.which("node") is None:
        return None, "node is not on PATH"
    found = sorted(cache.glob("*/package/build/lambda-extension/index.mjs"))
    if not found:
        if offline:
            return None, "%s is not in %s and --offline was given" % (PEER_PACKAGE, cache)
        npm = shutil.which("npm")
        if npm is None:
            return None, "npm is not on PATH to fetch %s" % PEER_PACKAGE
        cache.mkdir(parents=True, exist_ok=True)
        log("fetching %s with npm pack into %s ..." % (PEER_PACKAGE, cache))
        try:
            proc = subprocess.run([npm, "pack", PEER_PACKAGE, "--pack-destination", str(cache), "--silent"],
                                  cwd=str(cache), capture_output=True, text=True, timeout=180)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, "npm pack failed: %s" % exc
        if proc.returncode != 0:
            return None, "npm pack failed: %s" % (proc.stderr.strip()[-300:] or proc.stdout.strip()[-300:])
        archive = _packed_archive(cache, proc.stdout)
        if archive is None:
            return None, "npm pack left no .tgz in %s" % cache
        dest = cache / archive.name[:-len(".tgz")]
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tf.extractall(dest)
        found = sorted(cache.glob("*/package/build/lambda-extension/index.mjs"))
        if not found:
            return None, "%s has no build/lambda-extension/index.mjs" % archive.name
    ext_dir = found[-1].parent
    try:
        version = json.loads((ext_dir.parent.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        version = "?"
    return ext_dir, "%s %s, node %s" % (PEER_PACKAGE, version, _node_version())


def _packed_archive(cache: Path, stdout: str) -> Optional[Path]:
    """The archive ``npm pack`` just wrote: the .tgz name it printed (npm versions differ in what
    ``--silent`` prints, some nothing at all), else the newest .tgz in ``cache``."""
    for line in reversed(stdout.splitlines()):
        name = line.strip()
        if name.endswith(".tgz") and (cache / os.path.basename(name)).is_file():
            return cache / os.path.basename(name)
    packed = sorted(cache.glob("*.tgz"), key=lambda p: p.stat().st_mtime)
    return packed[-1] if packed else None


def _node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def opt_peer(base: Path, ext_dir: Path) -> Path:
    """``<base>/opt`` as the npm package's layer lays it out: ``extensions/sentry-extension`` (its bash
    launcher, with ``/opt/`` pointed at this directory) and ``sentry-extension/index.mjs``."""
    opt = base / "opt"
    (opt / "extensions").mkdir(parents=True, exist_ok=True)
    (opt / PEER_NAME).mkdir(parents=True, exist_ok=True)
    launcher = (ext_dir / PEER_NAME).read_text().replace('"/opt/', '"%s/' % opt)
    target = opt / "extensions" / PEER_NAME
    target.write_text(launcher)
    target.chmod(0o755)
    script = opt / PEER_NAME / "index.mjs"
    shutil.copy2(ext_dir / "index.mjs", script)
    script.chmod(0o755)
    return opt


def peer_opt(base: Path, offline: bool, log: Callable[[str], None]) -> Tuple[Optional[Path], Optional[str], str]:
    """The Node peer laid out under ``base`` for ``--peer node``: (opt dir or None, why it is skipped
    or None, note naming the package and node versions)."""
    ext_dir, note = find_peer(ROOT / "build" / "peer", offline, log)
    if ext_dir is None:
        return None, note, note
    if not port_free(PEER_PORT):
        return None, "port %d (the Node extension's fixed port) is in use" % PEER_PORT, note
    return opt_peer(base, ext_dir), None, note


def machine() -> Dict[str, Any]:
    """nproc, CPU model, memory, Python, kernel, date."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": nproc,
        "cpu": cpu,
        "mem_mib": mem,
        "python": "%s (%s)" % (sys.version.split()[0], sys.executable),
        "kernel": os.uname().release,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "loadavg": loadavg(),
    }


def command_line(script: str, args: Sequence[str]) -> str:
    """How the run was started, for its report: this interpreter (relative to the checkout when it
    is inside it), ``script`` and ``args``."""
    python = sys.executable
    return " ".join([os.path.relpath(python, ROOT) if python.startswith(str(ROOT)) else python, script] + list(args))


def save_results(data: Dict[str, Any], out: Optional[Path], kind: str, quick: bool) -> Path:
    """Write ``data`` as JSON to ``out``, by default ``bench-results/<kind>-<time>[-quick].json``; the path."""
    out = out or ROOT / "bench-results" / ("%s-%s%s.json" % (kind, time.strftime("%Y%m%d-%H%M%S"),
                                                            "-quick" if quick else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, default=str))
    return out


def say(msg: str) -> None:
    """A progress line of a benchmark, on stderr (stdout carries the report)."""
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> Optional[float]:
    """The 1-minute load average (other work on the machine skews every figure)."""
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
