"""``importlib.metadata`` stays out of the extension (lean_imports.py): urllib3's HTTP/2 package
is registered with its ``__init__`` deferred, and everything still works, over TLS too."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from sentry_ext.util.lean_imports import certifi_bundle, defer_package_init
from tools.fake_upstream import FakeUpstream
from tools.tlsutil import openssl, self_signed, server_context

ROOT = Path(__file__).resolve().parent.parent

# Started as bin/sentry-lambda-extension starts the extension (python -I, sentry_ext.main first),
# then what main's init thread does (lean_imports.install, logging, pipeline), one
# envelope delivered over TLS.
SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from sentry_ext import main
from sentry_ext.util import lean_imports, logs
lean_imports.install()
logs.setup("INFO")
from sentry_ext.config import load
from sentry_ext.pipeline import Pipeline
from sentry_ext.delivery.request import Request
cfg = load({"SENTRY_DSN": sys.argv[2], "SSL_CERT_FILE": sys.argv[3], "SENTRY_EXT_SPOOL_DIR": sys.argv[4]})
pipeline = Pipeline(cfg, main.bind_listener("127.0.0.1", 0), None)
pipeline.start()
body = b'{"event_id":"%s"}\n{"type":"event","length":2}\n{}\n' % (b"b" * 32)
key = cfg.dsn.public_key
pipeline.submit(Request("/api/%s/envelope/" % cfg.dsn.project_id, {"Content-Type": "application/x-sentry-envelope",
                "X-Sentry-Auth": "Sentry sentry_key=%s" % key}, body, key))
delivered = pipeline.flush(10)
import urllib3
print(json.dumps({"delivered": delivered, "metadata": "importlib.metadata" in sys.modules,
                  "resources": "importlib.resources" in sys.modules,
                  "unused": sorted(m for m in ("html.entities", "uuid", "platform", "dataclasses", "inspect")
                                   if m in sys.modules),
                  "shutil_ran": "copyfileobj" in vars(sys.modules.get("shutil", sys)),
                  "traceback_ran": "print_exception" in vars(sys.modules.get("traceback", sys)),
                  "http2_probe": "urllib3.http2.probe" in sys.modules,
                  "bound": getattr(urllib3, "http2", None) is sys.modules.get("urllib3.http2")}))
"""


@pytest.mark.skipif(openssl() is None, reason="no openssl command for the upstream's certificate")
def test_the_extension_never_imports_importlib_metadata(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    with FakeUpstream(tls=server_context(cert, key)) as upstream:
        proc = subprocess.run([sys.executable, "-I", "-c", SCRIPT, str(ROOT), upstream.dsn(),
                               str(cert), str(tmp_path / "spool")], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got == {"delivered": True, "metadata": False, "resources": False, "unused": [], "shutil_ran": False, "traceback_ran": False,
                       "http2_probe": True, "bound": True}, proc.stderr[-2000:]
        assert len(upstream.requests) == 1


def test_a_name_of_the_deferred_init_runs_it_then(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "lazypkg" / "inner"
    pkg.mkdir(parents=True)
    (tmp_path / "lazypkg" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("import json\nRAN = True\nVALUE = json.dumps(1)\n")
    (pkg / "sub.py").write_text("X = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("lazypkg", "lazypkg.inner", "lazypkg.inner.sub"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert defer_package_init("lazypkg.inner")
    assert not defer_package_init("lazypkg.inner")  # once
    from lazypkg.inner import sub  # a submodule: the __init__ does not run

    inner = sys.modules["lazypkg.inner"]
    assert sub.X == 42 and "RAN" not in inner.__dict__
    from lazypkg.inner import VALUE  # a name the __init__ defines: it runs now

    assert VALUE == "1" and inner.RAN is True
    with pytest.raises(ImportError):
        from lazypkg.inner import MISSING  # noqa: F401
    assert not defer_package_init("lazypkg.nothing_here")  # no such package: nothing registered
    assert isinstance(inner, types.ModuleType)


def test_a_deferred_plain_module_runs_at_its_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lazymod.py").write_text("import json\nVALUE = json.dumps([1])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazymod", raising=False)
    assert defer_package_init("lazymod")
    import lazymod  # the import statement alone does not run it

    assert "VALUE" not in vars(lazymod)
    assert lazymod.VALUE == "[1]"
    with pytest.raises(AttributeError):
        lazymod.MISSING  # noqa: B018


def test_certifi_bundle_is_the_file_certifi_names() -> None:
    import certifi

    assert certifi_bundle() == certifi.where()
