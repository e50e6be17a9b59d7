"""Build the Lambda layer: ``python3 tools/build_layer.py`` -> ``dist/sentry-lambda-extension-<version>.zip``.

Layout inside the zip (Lambda unpacks layers into ``/opt``)::

    extensions/sentry-lambda-extension                 launcher (sh, 0755): Lambda starts it
    sentry-lambda-extension/sentry_ext/                the extension
    sentry-lambda-extension/urllib3/, certifi/         vendored, pinned below, pure Python
    sentry-lambda-extension/bin/sentry-lambda-wrapper  for AWS_LAMBDA_EXEC_WRAPPER (sh, 0755)
    sentry-lambda-extension/bin/sentry-lambda-inert    bash stand-in used when there is no Python (0755)
    sentry-lambda-extension/bin/python-hook/sitecustomize.py  the wrapper puts it on a Python
                                                       function's PYTHONPATH: sentry-python's org_id
    sentry-lambda-extension/LICENSE                    this project's licence (MIT)
    sentry-lambda-extension/LICENSES/                  licences of the vendored packages
    sentry-lambda-extension/BUILD-INFO.json            versions, wheel hashes, bytecode tags
    .../__pycache__/<module>.cpython-3XX.pyc           bytecode for each Lambda Python found

The launcher runs ``python -IBS`` with ``/opt/sentry-lambda-extension`` as the only extra import
path, so the function's own packages can neither shadow ours nor be shadowed by them.

Pure Python: the build refuses native code (``.so`` and friends, ELF/Mach-O/PE files), so one zip
serves x86_64 and arm64. The ``.pyc`` files are bytecode, not native code: ``/opt`` is read-only
in Lambda, so Python cannot cache bytecode there and would compile every module on every cold
start; tools/BENCHMARKS.md has the measurements (``--measure`` repeats them). They
are "unchecked-hash" pycs (PEP 552), valid whatever mtimes the unpacked files get.

Reproducible: the same sources, wheels and interpreters give a byte-identical zip (fixed
timestamps and modes, sorted entries, ``PYTHONHASHSEED=0`` while compiling; ``SOURCE_DATE_EPOCH``
overrides the fixed timestamp). Wheels are cached in ``build/wheels`` and checked against the
pinned SHA-256 before use, so rebuilding needs no network.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import http.client
import io
import json
import logging
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

log = logging.getLogger("build_layer")

ROOT = Path(__file__).resolve().parent.parent
NAME = "sentry-lambda-extension"
LIB = NAME  # top-level directory of the layer holding the code: /opt/sentry-lambda-extension
OPT = "/opt"
LAUNCHER = ROOT / "bin" / NAME
WRAPPER = ROOT / "bin" / "sentry-lambda-wrapper"
INERT = ROOT / "bin" / "sentry-lambda-inert"  # bash stand-in the launcher runs when there is no Python
PYTHON_HOOK = ROOT / "bin" / "python-hook" / "sitecustomize.py"  # runs in the function (see the wrapper)
PACKAGE = ROOT / "sentry_ext"
DEFAULT_OUT = ROOT / "dist"
DEFAULT_WHEELS = ROOT / "build" / "wheels"

#: Every Python version Lambda offers (managed runtimes python3.9 ... python3.14).
LAMBDA_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")

#: 1980-01-01 is the earliest ZIP timestamp; SOURCE_DATE_EPOCH overrides it.
FIXED_DATE = (1980, 1, 1, 0, 0, 0)

NATIVE_SUFFIXES = (".so", ".pyd", ".dll", ".dylib", ".a", ".o", ".exe", ".lib")
NATIVE_MAGICS = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe")


@dataclass(frozen=True)
class Vendored:
    """A pure-Python wheel copied into the layer (its top-level package and its licence files)."""

    name: str
    version: str
    sha256: str
    package: str

    @property
    def wheel(self) -> str:
        return "%s-%s-py3-none-any.whl" % (self.name, self.version)


#: urllib3 2.6.x is the newest line that still supports Python 3.9 (2.7 requires 3.10).
VENDORED = (
    Vendored("urllib3", "2.6.3", "bf272323e553dfb2e87d9bfd225ca7b0f467b919d7bbd355436d3fd37cb0acd4", "urllib3"),
    Vendored("certifi", "2026.10.18", "73191c47aaa79da394e8fee2dbc2ec827432cab56311122c9e47abf79e390f62", "certifi"),
)


class BuildError(RuntimeError):
    """The layer cannot be built as specified."""


@dataclass
class Entry:
    """One file of the layer."""

    name: str  # path inside the zip
    data: bytes
    mode: int = 0o644


@dataclass
class BuildResult:
    path: Path
    size: int
    sha256: str
    entries: List[str]
    bytecode: Dict[str, str]  # cache tag -> full interpreter version used
    missing_bytecode: List[str] = field(default_factory=list)


# -- interpreters ----------------------------------------------------------------------------------

_PROBE = "import sys; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3]); " \
         "print(sys.implementation.name); print(sys.implementation.cache_tag)"


@dataclass(frozen=True)
class Interpreter:
    executable: str  # the real binary (never a pyenv shim)
    version: str  # "3.9.18"
    cache_tag: str  # "cpython-39"

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


def _clean_env() -> Dict[str, str]:
    """This environment without PYTHON* variables (PYTHONPATH and friends must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def probe(candidate: str) -> Optional[Interpreter]:
    """The interpreter behind ``candidate`` if it is a working CPython, else None."""
    try:
        out = subprocess.run([candidate, "-S", "-c", _PROBE], capture_output=True, text=True,
                             timeout=30, env=_clean_env())
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 4 or lines[2] != "cpython":
        return None
    return Interpreter(executable=lines[0], version=lines[1], cache_tag=lines[3])


def _version_key(path: str) -> Tuple[int, ...]:
    match = re.search(r"/(\d+)\.(\d+)\.(\d+)[^/]*/bin/", path)
    return tuple(int(x) for x in match.groups()) if match else (0,)


def _uv_pythons(minor: str) -> List[str]:
    """Interpreters ``uv python install`` put in its directory (``UV_PYTHON_INSTALL_DIR`` or the default)."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    root = os.environ.get("UV_PYTHON_INSTALL_DIR") or os.path.join(data_home, "uv", "python")
    found = glob.glob(os.path.join(root, "cpython-%s.*" % minor, "bin", "python" + minor))
    return sorted((p for p in found if re.search(r"/cpython-\d+\.\d+\.\d+-[^/]*/bin/", p)),
                  key=lambda p: _version_key(re.sub(r"/cpython-(\d+\.\d+\.\d+)[^/]*/", r"/\1/", p)),
                  reverse=True)


def find_python(minor: str, extra: Sequence[str] = ()) -> Optional[Interpreter]:
    """A CPython ``minor`` ("3.9"): from ``extra``, pyenv's and uv's versions, then PATH and /usr/bin."""
    candidates: List[str] = list(extra)
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    installed = glob.glob(os.path.join(pyenv_root, "versions", minor + ".*", "bin", "python" + minor))
    candidates += sorted((p for p in installed if re.search(r"/\d+\.\d+\.\d+/bin/", p)), key=_version_key,
                         reverse=True)
    candidates += _uv_pythons(minor)
    on_path = shutil.which("python" + minor)
    if on_path:
        candidates.append(on_path)
    candidates += ["/var/lang/bin/python" + minor, "/usr/local/bin/python" + minor, "/usr/bin/python" + minor]
    seen = set()
    for cand in candidates:
        if cand in seen or not os.path.exists(cand):
            continue
        seen.add(cand)
        interp = probe(cand)
        if interp is not None and interp.minor == minor:
            return interp
    return None


# -- sources ---------------------------------------------------------------------------------------

def version() -> str:
    text = (PACKAGE / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    if not match:
        raise BuildError("no __version__ in sentry_ext/__init__.py")
    return match.group(1)


def _check_pure(name: str, data: bytes) -> None:
    if name.lower().endswith(NATIVE_SUFFIXES) or data[:4] in NATIVE_MAGICS or data[:2] == b"MZ":
        raise BuildError("native code is not allowed in the layer (one zip serves x86_64 and arm64): %s" % name)


def own_entries() -> List[Entry]:
    """The launcher, the wrapper, its Python hook, the inert stand-in, the licence and every ``.py`` file of ``sentry_ext``."""
    entries = [
        Entry("extensions/" + NAME, LAUNCHER.read_bytes(), 0o755),
        Entry(LIB + "/bin/" + WRAPPER.name, WRAPPER.read_bytes(), 0o755),
        Entry(LIB + "/bin/" + INERT.name, INERT.read_bytes(), 0o755),
        Entry(LIB + "/bin/python-hook/" + PYTHON_HOOK.name, PYTHON_HOOK.read_bytes()),
        Entry(LIB + "/LICENSE", (ROOT / "LICENSE").read_bytes()),
    ]
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(ROOT).as_posix()
        entries.append(Entry(LIB + "/" + rel, path.read_bytes()))
    return entries


def fetch_wheel(dep: Vendored, wheel_dir: Path) -> Path:
    """The pinned wheel from the cache, downloaded with pip on a miss; its SHA-256 is checked."""
    path = wheel_dir / dep.wheel
    if not path.exists():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--platform", "any", "--python-version", "3.9", "--implementation", "py", "--abi", "none",
               "--dest", str(wheel_dir), "%s==%s" % (dep.name, dep.version)]
        log.info("downloading %s %s", dep.name, dep.version)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            raise BuildError("pip download %s==%s failed:\n%s%s" % (dep.name, dep.version, proc.stdout, proc.stderr))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != dep.sha256:
        raise BuildError("%s: sha256 %s does not match the pinned %s (delete it to download again)"
                         % (path, digest, dep.sha256))
    return path


def wheel_entries(dep: Vendored, wheel: Path) -> List[Entry]:
    """The package's files (no tests, no bytecode) plus its licence files under LICENSES/."""
    entries: List[Entry] = []
    dist_info = "%s-%s.dist-info/" % (dep.name, dep.version)
    with zipfile.ZipFile(wheel) as zf:
        wheel_meta = zf.read(dist_info + "WHEEL").decode("utf-8")
        if "Root-Is-Purelib: true" not in wheel_meta:
            raise BuildError("%s is not a pure-Python wheel" % wheel.name)
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            name = info.filename
            if info.is_dir():
                continue
            parts = name.split("/")
            if name.startswith(dist_info):
                if re.match(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", parts[-1], re.I):
                    entries.append(Entry("%s/LICENSES/%s-%s/%s" % (LIB, dep.name, dep.version, parts[-1]),
                                         zf.read(info)))
                continue
            if parts[0] != dep.package:
                raise BuildError("%s: unexpected top-level entry %s" % (wheel.name, name))
            if "__pycache__" in parts or "tests" in parts[1:-1] or name.endswith((".pyc", ".pyo")):
                continue
            data = zf.read(info)
            _check_pure(name, data)
            entries.append(Entry("%s/%s" % (LIB, name), data))
    if not any("/LICENSES/" in e.name for e in entries):
        raise BuildError("%s ships no licence file" % wheel.name)
    return entries


# -- bytecode --------------------------------------------------------------------------------------

_COMPILE = r"""
import importlib.util, os, py_compile, sys
root, opt = sys.argv[1], sys.argv[2]
for rel in sys.stdin.read().split():
    src = os.path.join(root, rel)
    py_compile.compile(src, cfile=importlib.util.cache_from_source(src), dfile=opt + "/" + rel,
                       doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


def bytecode_entries(sources: Sequence[Entry], interpreters: Sequence[Interpreter]) -> List[Entry]:
    """Unchecked-hash ``.pyc`` for every ``.py`` in ``sources``, per interpreter.

    ``co_filename`` is the installed path (``/opt/sentry-lambda-extension/...``), so tracebacks
    name real files; ``PYTHONHASHSEED=0`` keeps set constants (3.9, 3.10) in a stable order.
    """
    py_files = [e for e in sources if e.name.endswith(".py")]
    if not py_files or not interpreters:
        return []
    out: List[Entry] = []
    with tempfile.TemporaryDirectory(prefix="sentry-layer-") as tmp:
        stage = Path(tmp)
        for entry in py_files:
            dest = stage / entry.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(entry.data)
        rels = "\n".join(e.name for e in py_files)
        for interp in interpreters:
            env = dict(_clean_env(), PYTHONHASHSEED="0")
            proc = subprocess.run([interp.executable, "-S", "-c", _COMPILE, str(stage), OPT], input=rels,
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise BuildError("compiling with %s failed:\n%s" % (interp.executable, proc.stderr[-2000:]))
        for pyc in sorted(stage.rglob("*.pyc")):
            out.append(Entry(pyc.relative_to(stage).as_posix(), pyc.read_bytes()))
    return out


# -- zip -------------------------------------------------------------------------------------------

def _date() -> Tuple[int, int, int, int, int, int]:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not epoch:
        return FIXED_DATE
    stamp = time.gmtime(max(int(epoch), 315532800))  # not before 1980-01-01
    return (stamp.tm_year, stamp.tm_mon, stamp.tm_mday, stamp.tm_hour, stamp.tm_min, stamp.tm_sec - stamp.tm_sec % 2)


def write_zip(entries: Iterable[Entry], dest: Path) -> None:
    """Write a deterministic zip: sorted names, explicit directories, fixed dates and modes."""
    files = {e.name: e for e in entries}
    dirs = set()
    for name in files:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]) + "/")
    date = _date()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(set(files) | dirs):
            info = zipfile.ZipInfo(name, date_time=date)
            info.create_system = 3  # Unix: unzip applies the modes below
            if name in dirs:
                info.external_attr = (0o40755 << 16) | 0x10
                info.compress_type = zipfile.ZIP_STORED
                zf.writestr(info, b"")
            else:
                entry = files[name]
                info.external_attr = (0o100000 | entry.mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, entry.data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, dest)


# -- build -----------------------------------------------------------------------------------------

def missing_help(missing: Sequence[str]) -> str:
    """What to do about Lambda Pythons the build found no interpreter for (one line per way)."""
    versions = " ".join(missing)
    first = missing[0] if missing else "3.X"
    return "\n".join([
        "  to include %s, make an interpreter findable and build again, any of:" % ("it" if len(missing) == 1 else "them"),
        "    pyenv install %s                (pyenv's versions are found)" % versions,
        "    uv python install %s            (uv's are found too)" % versions,
        "    python3 tools/build_layer.py --python /path/to/python%s ...    (any CPython %s)" % (first, first),
        "  or build one zip per version in Lambda's build images and merge their bytecode (needs docker):",
        "    for v in %s; do docker run --rm -v \"$PWD\":/src -w /src public.ecr.aws/sam/build-python$v \\"
        % " ".join(LAMBDA_PYTHONS),
        "      python3 tools/build_layer.py --bytecode $v --out dist/py$v; done",
        "    python3 tools/build_layer.py --merge dist/py3.*/*.zip --all-pythons",
    ])


def select_interpreters(bytecode: str, extra: Sequence[str] = (),
                        have: Sequence[str] = ()) -> Tuple[List[Interpreter], List[str]]:
    """``auto``: every Lambda version found; ``all``: every Lambda version, each must be found;
    ``none``; or a comma list of versions that must be found. Versions in ``have`` (bytecode
    merged from other zips) are neither looked for nor missing."""
    if bytecode == "none":
        return [], []
    if bytecode in ("auto", "all"):
        wanted: Tuple[str, ...] = LAMBDA_PYTHONS
    else:
        wanted = tuple(v.strip() for v in bytecode.split(",") if v.strip())
    found: List[Interpreter] = []
    missing: List[str] = []
    for minor in wanted:
        if minor in have:
            continue
        interp = find_python(minor, [p for p in extra if probe_minor(p) == minor])
        if interp is None:
            missing.append(minor)
        else:
            found.append(interp)
    if missing and bytecode != "auto":
        raise BuildError("no interpreter found for Python %s\n%s" % (", ".join(missing), missing_help(missing)))
    return found, missing


def _tag_minor(cache_tag: str) -> str:
    """``cpython-312`` -> ``3.12``."""
    digits = cache_tag.rsplit("-", 1)[-1]
    return "%s.%s" % (digits[0], digits[1:])


def merge_bytecode(sources: Sequence[Entry], zips: Sequence[Path]) -> Tuple[List[Entry], Dict[str, str]]:
    """The ``.pyc`` files of layer zips built elsewhere (one per Lambda build image, say) from the
    same sources: every ``.py`` of theirs must be byte-identical to ours, so the bytecode matches.
    Returns the entries and ``{cache_tag: interpreter version}``; the first zip to carry a tag wins."""
    own = {e.name: e.data for e in sources if e.name.endswith(".py")}
    entries: List[Entry] = []
    tags: Dict[str, str] = {}
    for path in zips:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                info = json.loads(zf.read(LIB + "/BUILD-INFO.json"))
                theirs = {n for n in names if n.endswith(".py")}
                differ = sorted((theirs ^ set(own)) | {n for n in theirs & set(own) if zf.read(n) != own[n]})
                if differ:
                    raise BuildError("%s was built from other sources (%d file(s) differ, e.g. %s): rebuild it "
                                     "from this tree" % (path, len(differ), differ[0]))
                for tag, full in sorted(info.get("bytecode", {}).items()):
                    if tag in tags:
                        continue
                    tags[tag] = full
                    entries += [Entry(n, zf.read(n)) for n in names if n.endswith(".%s.pyc" % tag)]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise BuildError("cannot merge bytecode from %s: %s" % (path, exc)) from exc
    return entries, tags


def probe_minor(path: str) -> Optional[str]:
    interp = probe(path)
    return interp.minor if interp else None


def build(out_dir: Path = DEFAULT_OUT, wheel_dir: Path = DEFAULT_WHEELS, bytecode: str = "auto",
          pythons: Sequence[str] = (), merge: Sequence[Path] = ()) -> BuildResult:
    """Build the layer zip into ``out_dir`` and return what went into it.

    ``merge``: layer zips built from the same sources whose bytecode is taken over (see
    ``merge_bytecode``); versions they carry are not compiled again.
    """
    sources = own_entries()
    for dep in VENDORED:
        sources += wheel_entries(dep, fetch_wheel(dep, wheel_dir))
    for entry in sources:
        _check_pure(entry.name, entry.data)
    merged, merged_tags = merge_bytecode(sources, merge)
    interpreters, missing = select_interpreters(bytecode, pythons, [_tag_minor(t) for t in merged_tags])
    pycs = bytecode_entries(sources, interpreters) + merged
    tags = dict(merged_tags, **{i.cache_tag: i.version for i in interpreters})
    info = {
        "name": NAME,
        "version": version(),
        "vendored": {d.name: {"version": d.version, "wheel_sha256": d.sha256} for d in VENDORED},
        "bytecode": dict(sorted(tags.items())),
        "wrapper": "%s/%s/bin/%s" % (OPT, LIB, WRAPPER.name),
    }
    sources.append(Entry(LIB + "/BUILD-INFO.json", (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()))
    entries = sources + pycs
    dest = Path(out_dir) / ("%s-%s.zip" % (NAME, info["version"]))
    write_zip(entries, dest)
    data = dest.read_bytes()
    return BuildResult(path=dest, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                       entries=sorted(e.name for e in entries), bytecode=dict(info["bytecode"]),
                       missing_bytecode=missing)


def summary(result: BuildResult) -> str:
    """What a person wants to see after a build: size, contents per part, bytecode."""
    groups: Dict[str, List[int]] = {}
    with zipfile.ZipFile(result.path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = info.filename.split("/")
            if info.filename.endswith(".pyc"):
                key = "bytecode (.pyc)"
            elif parts[0] == "extensions":
                key = info.filename
            else:
                key = "/".join(parts[:2])
            stat = groups.setdefault(key, [0, 0, 0])
            stat[0] += 1
            stat[1] += info.file_size
            stat[2] += info.compress_size
    lines = ["%s  %d bytes (%.1f KiB)  sha256 %s" % (result.path, result.size, result.size / 1024, result.sha256),
             "  %-46s %6s %10s %10s" % ("part", "files", "bytes", "zipped")]
    for key in sorted(groups):
        files, size, zipped = groups[key]
        lines.append("  %-46s %6d %10d %10d" % (key, files, size, zipped))
    tags = ", ".join("%s (%s)" % (tag, ver) for tag, ver in sorted(result.bytecode.items())) or "none"
    lines.append("  bytecode for: %s" % tags)
    if result.missing_bytecode:
        lines.append("  MISSING bytecode for Python %s (no interpreter found): on those runtimes the extension "
                     "compiles from source at every cold start, 70-95 ms more CPU"
                     % ", ".join(result.missing_bytecode))
        lines.append(missing_help(result.missing_bytecode))
    lines.append("  vendored: %s" % ", ".join("%s %s" % (d.name, d.version) for d in VENDORED))
    lines.append("  no native code: one zip for x86_64 and arm64")
    return "\n".join(lines)


# -- cold-start measurement ------------------------------------------------------------------------

def run_once(opt: Path, python: str, spool: Path, timeout: float = 30.0) -> Dict[str, float]:
    """Start the layer's launcher once; ms from spawn to register, next and ready, and CPU ms."""
    if __package__ in (None, ""):  # run as a script: make ``tools`` importable
        sys.path.insert(0, str(ROOT))
    from tools.ext_api_stub import ExtApiStub
    from tools.netutil import free_port

    port = free_port()
    with ExtApiStub() as api:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_RUNTIME_API": api.address,
            "SENTRY_DSN": "http://0123456789abcdef0123456789abcdef@127.0.0.1:9/1",
            "SENTRY_EXT_PORT": str(port),
            "SENTRY_EXT_TELEMETRY_PORT": str(free_port()),
            "SENTRY_EXT_TELEMETRY_HOST": "127.0.0.1",
            "SENTRY_EXT_SPOOL_DIR": str(spool),
            "SENTRY_EXT_STATE_FILE": str(spool) + ".state",
            "SENTRY_EXT_PYTHON": python,
            "SENTRY_EXT_LOG_LEVEL": "WARNING",
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with tempfile.TemporaryFile() as errors:
            t0 = time.monotonic()
            proc = subprocess.Popen([str(opt / "extensions" / NAME)], env=env, cwd=str(opt),
                                    stdin=subprocess.DEVNULL, stdout=errors, stderr=subprocess.STDOUT)
            try:
                if not api.wait_first_next(timeout):
                    errors.seek(0)
                    raise BuildError("the extension did not reach /event/next:\n%s"
                                     % errors.read().decode("utf-8", "replace")[-2000:])
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                try:  # the listener is bound before next: this waits in the backlog until the pipeline serves
                    conn.request("GET", "/health")
                    status = conn.getresponse().status
                finally:
                    conn.close()
                t_ready = time.monotonic()
                if status != 200:
                    raise BuildError("/health answered %d" % status)
                api.push_shutdown()
                proc.wait(timeout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert api.register_t is not None and api.first_next_t is not None
        return {
            "register_ms": (api.register_t - t0) * 1000,
            "next_ms": (api.first_next_t - t0) * 1000,
            "ready_ms": (t_ready - t0) * 1000,
            "cpu_ms": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000,
        }


def unpack(zip_path: Path, opt: Path, with_bytecode: bool = True) -> None:
    """Unpack the layer like Lambda does (modes kept); optionally without the ``.pyc`` files."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if not with_bytecode and info.filename.endswith(".pyc"):
                continue
            target = opt / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
            os.chmod(target, (info.external_attr >> 16) & 0o777)


def measure(zip_path: Path, interpreters: Sequence[Interpreter], runs: int) -> List[Dict[str, float]]:
    """Cold start of the unpacked layer with and without the shipped bytecode, per interpreter.

    Each run starts ``extensions/sentry-lambda-extension`` (the real launcher, so ``python -IBS``
    as in Lambda: nothing is cached between runs) against a fake Extensions API and records, from
    spawn: ``register`` (POST /register arrived), ``next`` (first GET /event/next: the extension's
    part of Init is over) and ``ready`` (the ingest answered /health: urllib3 and the pipeline are
    loaded and serving), plus the CPU time the process used. Medians over ``runs``, interleaved.
    """
    rows: List[Dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="sentry-layer-measure-") as tmp:
        base = Path(tmp)
        opts = {True: base / "pyc", False: base / "source"}
        for with_pyc, opt in opts.items():
            unpack(zip_path, opt, with_bytecode=with_pyc)
        for interp in interpreters:
            samples: Dict[bool, List[Dict[str, float]]] = {True: [], False: []}
            for _ in range(runs):
                for with_pyc, opt in opts.items():
                    samples[with_pyc].append(run_once(opt, interp.executable, base / "spool"))
            for with_pyc, got in samples.items():
                row: Dict[str, float] = {key: statistics.median(s[key] for s in got) for key in got[0]}
                row["python"] = float(interp.minor.split(".")[1])
                row["variant"] = 1.0 if with_pyc else 0.0
                rows.append(row)
    return rows


def _print_measurements(rows: List[Dict[str, float]]) -> None:
    print("median ms from spawn (%s)" % "lower is better")
    print("  %-8s %-12s %9s %9s %9s %9s" % ("python", "variant", "register", "next", "ready", "cpu"))
    for row in sorted(rows, key=lambda r: (r["python"], r["variant"])):
        print("  3.%-6d %-12s %9.1f %9.1f %9.1f %9.1f" % (
            row["python"], "shipped pyc" if row["variant"] else "source only", row["register_ms"],
            row["next_ms"], row["ready_ms"], row["cpu_ms"]))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Build the sentry-lambda-extension layer zip.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default dist/)")
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS,
                        help="wheel cache (default build/wheels); pinned wheels found there are not downloaded")
    parser.add_argument("--bytecode", default="auto",
                        help="'auto' (default: every Lambda Python found among %s), 'all' (every one, or fail), "
                             "'none', or a comma list that must all be found, e.g. 3.9,3.12" % ",".join(LAMBDA_PYTHONS))
    parser.add_argument("--all-pythons", action="store_const", const="all", dest="bytecode",
                        help="the complete layer: bytecode for every Lambda Python (same as --bytecode all); "
                             "fails naming the missing versions and how to get them")
    parser.add_argument("--python", action="append", default=[], metavar="PATH",
                        help="an interpreter to compile bytecode with (repeatable); preferred over discovery")
    parser.add_argument("--merge", nargs="+", type=Path, default=[], metavar="ZIP",
                        help="take the bytecode of layer zips built from the same sources elsewhere, e.g. one "
                             "per Lambda build image (public.ecr.aws/sam/build-python3.X)")
    parser.add_argument("--measure", type=int, default=0, metavar="RUNS",
                        help="after building, measure the cold start with and without bytecode (RUNS per case)")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = build(opts.out, opts.wheels, opts.bytecode, opts.python, opts.merge)
    except BuildError as exc:
        print("build_layer: %s" % exc, file=sys.stderr)
        return 1
    print(summary(result))
    if opts.measure:
        interpreters = [i for i in (find_python(m, opts.python) for m in LAMBDA_PYTHONS) if i is not None]
        _print_measurements(measure(result.path, interpreters, opts.measure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
