"""tools/build_layer.py: the layer zip's contents, purity and reproducibility, and the extension
running end to end from the unpacked layer on an interpreter that has no urllib3 or certifi."""

from __future__ import annotations

import json
import os
import re
import struct
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest

from tools import build_layer
from tools.build_layer import LAMBDA_PYTHONS, BuildResult, find_python, unpack
from tools.emulator import Emulator
from tools.fake_upstream import FakeUpstream
from tools.netutil import free_port

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_FUNCTION = ROOT / "tools" / "sample_function"
LIB = "sentry-lambda-extension"
EXT = "extensions/sentry-lambda-extension"
WRAPPER = LIB + "/bin/sentry-lambda-wrapper"
PYC_NAME = re.compile(r"^(.*)/__pycache__/([A-Za-z0-9_]+)\.(cpython-3\d+)\.pyc$")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """One build per test module (wheels come from the build/wheels cache after the first run)."""
    return build_layer.build(out_dir=tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def opt(built: BuildResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The layer unpacked into an /opt-like directory, modes kept."""
    path = tmp_path_factory.mktemp("opt")
    unpack(built.path, path)
    return path


def modes(path: Path) -> Dict[str, int]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: (i.external_attr >> 16) & 0o777 for i in zf.infolist()}


def test_layout_modes_and_licences(built: BuildResult) -> None:
    names = set(built.entries)
    assert built.path.name == "sentry-lambda-extension-%s.zip" % build_layer.version()
    got = modes(built.path)
    assert got[EXT] == 0o755 and got[WRAPPER] == 0o755
    assert got[LIB + "/sentry_ext/main.py"] == 0o644
    assert got[LIB + "/bin/python-hook/sitecustomize.py"] == 0o644  # the wrapper's org id hook
    assert {n.split("/")[0] for n in names} == {"extensions", LIB}
    assert [n for n in names if n.startswith("extensions/")] == [EXT]
    for py in (ROOT / "sentry_ext").glob("*.py"):
        assert "%s/sentry_ext/%s" % (LIB, py.name) in names
    for required in ("urllib3/__init__.py", "urllib3/connectionpool.py", "certifi/__init__.py",
                     "certifi/cacert.pem", "BUILD-INFO.json"):
        assert "%s/%s" % (LIB, required) in names
    assert any(n.startswith(LIB + "/LICENSES/urllib3-") for n in names)
    assert any(n.startswith(LIB + "/LICENSES/certifi-") for n in names)
    # Nothing the function's own packages could collide with, and no test or packaging leftovers.
    assert not [n for n in names if ".dist-info" in n or "/tests/" in n or n.endswith((".pth", ".egg-info"))]
    with zipfile.ZipFile(built.path) as zf:
        assert zf.read(EXT) == (ROOT / "bin" / "sentry-lambda-extension").read_bytes()
        info = json.loads(zf.read(LIB + "/BUILD-INFO.json"))
    assert info["vendored"]["urllib3"]["version"] == "2.6.3"
    assert info["wrapper"] == "/opt/" + WRAPPER


def test_pure_python_and_bytecode_only_as_unchecked_hash_pycs(built: BuildResult) -> None:
    tags = set()
    with zipfile.ZipFile(built.path) as zf:
        for info in zf.infolist():
            data = zf.read(info)
            name = info.filename
            assert not name.lower().endswith((".so", ".pyd", ".dll", ".dylib", ".a", ".o", ".exe")), name
            assert data[:4] not in build_layer.NATIVE_MAGICS, name
            if name.endswith(".pyc"):
                match = PYC_NAME.match(name)
                assert match, name
                assert match.group(1) + "/" + match.group(2) + ".py" in built.entries, name
                tags.add(match.group(3))
                flags = struct.unpack("<I", data[4:8])[0]
                assert flags == 0b01, "%s: not an unchecked-hash pyc (flags %d)" % (name, flags)
    assert tags == set(built.bytecode)


def test_reproducible(built: BuildResult, tmp_path: Path) -> None:
    again = build_layer.build(out_dir=tmp_path)
    assert again.path.read_bytes() == built.path.read_bytes()


def test_cli_prints_size_and_contents(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_layer.py"), "--out", str(tmp_path),
                           "--bytecode", "none"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    zips = list(tmp_path.glob("sentry-lambda-extension-*.zip"))
    assert len(zips) == 1
    assert "%d bytes" % zips[0].stat().st_size in proc.stdout
    for part in (EXT, LIB + "/sentry_ext", LIB + "/urllib3", LIB + "/certifi", "bytecode for: none"):
        assert part in proc.stdout
    with zipfile.ZipFile(zips[0]) as zf:
        assert not [n for n in zf.namelist() if n.endswith(".pyc")]


def test_refuses_native_code() -> None:
    with pytest.raises(build_layer.BuildError):
        build_layer._check_pure("x/_speedups.so", b"whatever")
    with pytest.raises(build_layer.BuildError):
        build_layer._check_pure("x/data.bin", b"\x7fELF\x02\x01\x01")


@pytest.mark.parametrize("minor", LAMBDA_PYTHONS)
def test_every_module_imports_from_the_layer_alone(minor: str, built: BuildResult, opt: Path) -> None:
    """``python -IBS`` with only the layer on the path, as the launcher runs it, on each Lambda Python."""
    interp = find_python(minor)
    if interp is None:
        pytest.skip("no Python %s on this machine" % minor)
    lib = str(opt / LIB)
    bare = subprocess.run([interp.executable, "-IS", "-c", "import urllib3"], capture_output=True)
    assert bare.returncode != 0, "this interpreter must not find urllib3 without the layer"
    modules = sorted("sentry_ext." + p.stem for p in (opt / LIB / "sentry_ext").glob("*.py")
                     if p.stem not in ("__init__", "__main__"))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib, urllib3, certifi\n"
            "for m in sys.argv[2:]: importlib.import_module(m)\n"
            "print(urllib3.__version__, urllib3.__file__, certifi.where())")
    proc = subprocess.run([interp.executable, "-IBS", "-v", "-c", code, lib] + modules,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version, urllib3_file, cafile = proc.stdout.split()
    assert version == "2.6.3" and urllib3_file.startswith(lib) and cafile.startswith(lib)
    if interp.cache_tag in built.bytecode:  # the shipped bytecode is what gets loaded
        assert "__pycache__/main.%s.pyc" % interp.cache_tag in proc.stderr
        assert "__pycache__/connectionpool.%s.pyc" % interp.cache_tag in proc.stderr
        assert "code object from '%s/urllib3/__pycache__/__init__.%s.pyc'" % (lib, interp.cache_tag) in proc.stderr


def test_launcher_without_python_or_bash_exits_with_a_clear_message(opt: Path) -> None:
    if os.path.exists("/var/lang/bin/python3"):
        pytest.skip("/var/lang/bin/python3 exists here")
    proc = subprocess.run([str(opt / EXT)], env={"PATH": "/nonexistent"}, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 1
    assert "no python3 on this runtime" in proc.stderr and "SENTRY_EXT_PYTHON" in proc.stderr
    assert "no bash for the inert stand-in" in proc.stderr


def test_without_python_the_bash_stand_in_keeps_the_function_healthy(opt: Path, tmp_path: Path) -> None:
    """A Node-like runtime: bash and coreutils on PATH, no python3. The launcher runs the inert
    stand-in, which registers for SHUTDOWN only and exits 0 at SHUTDOWN."""
    if os.path.exists("/var/lang/bin/python3"):
        pytest.skip("/var/lang/bin/python3 exists here")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "cat"):
        found = shutil.which(tool)
        assert found, tool
        os.symlink(found, bindir / tool)
    env = {"PATH": str(bindir), "SENTRY_DSN": "https://k@o1.ingest.sentry.io/1"}
    with Emulator(opt, task_root=SAMPLE_FUNCTION, env=env, runtime_env={"SENTRY_DSN": ""},
                  function_name="no-python") as emu:
        emu.start()
        registration = emu.registrations[0]
        assert registration["events"] == ["SHUTDOWN"]
        for _ in range(2):
            result = emu.invoke({"capture": False})
            assert result.status == "success"
            assert result.post_runtime_ms is not None and result.post_runtime_ms < 50
        shutdown = emu.shutdown()
        log = emu.output("sentry-lambda-extension")
    assert shutdown.exit_codes == {"sentry-lambda-extension": 0} and not shutdown.killed, log
    assert log.count("inert: no python3 on this runtime") == 1, log


def files_under(path: Path) -> List[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_end_to_end_from_the_unpacked_layer_on_python39(opt: Path, tmp_path: Path) -> None:
    """The emulator runs the unpacked layer's launcher with a Python 3.9 that has no urllib3 or
    certifi (the runtime, awslambdaric + sentry-sdk, runs in the project's venv); the function's
    SDK is wired with the layer's own exec wrapper."""
    py39 = find_python("3.9")
    if py39 is None:
        pytest.skip("no Python 3.9 on this machine: cannot prove the layer on Lambda's oldest Python")
    before = files_under(opt)
    with FakeUpstream() as upstream:
        env = {
            "SENTRY_DSN": upstream.dsn(),
            "SENTRY_EXT_PORT": str(free_port()),
            "SENTRY_EXT_TELEMETRY_PORT": str(free_port()),
            "SENTRY_EXT_TELEMETRY_HOST": "127.0.0.1",
            "SENTRY_EXT_SPOOL_DIR": str(tmp_path / "spool"),
            "SENTRY_EXT_STATE_FILE": str(tmp_path / "state"),
            "SENTRY_EXT_PYTHON": py39.executable,
        }
        ids: List[str] = []
        with Emulator(opt, task_root=SAMPLE_FUNCTION, env=env, exec_wrapper=str(opt / WRAPPER),
                      function_name="layer-test") as emu:
            emu.start()
            pid = emu.pids["sentry-lambda-extension"]
            assert os.path.realpath("/proc/%d/exe" % pid) == os.path.realpath(py39.executable)
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                argv = fh.read().split(b"\0")
            # argv: python -IBS -c <code> <lib> <name> <stand-in> (and the trailing NUL's empty field)
            assert argv[1] == b"-IBS" and os.path.realpath(argv[-4].decode()) == os.path.realpath(opt / LIB)
            assert argv[-2].decode().endswith("/bin/sentry-lambda-inert")
            for _ in range(2):
                result = emu.invoke({"messages": 1})
                assert result.status == "success", emu.output("runtime")
                ids += json.loads(result.response or b"{}")["event_ids"]
            shutdown = emu.shutdown()
            log = emu.output("sentry-lambda-extension")
        assert shutdown.exit_codes == {"sentry-lambda-extension": 0}, log
        assert len(ids) == 4
        assert upstream.wait_for(lambda reqs: set(ids) <= set(upstream.event_ids()), timeout=10), log
        assert "registered sentry-lambda-extension" in log and "relaying" in log
        assert "Traceback" not in log
    assert files_under(opt) == before, "the extension wrote into the read-only layer"

