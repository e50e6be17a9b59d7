"""Keep ``importlib.metadata`` (1.9 MiB of RSS, ~10 ms of start-up) and ``importlib.resources``
(certifi's, below) out of the extension.

Only urllib3's HTTP/2 support wants it: ``urllib3/connection.py`` does
``from .http2 import probe as http2_probe``, which runs ``urllib3/http2/__init__.py``, whose first
line is ``from importlib.metadata import version`` (used only by ``inject_into_urllib3``, to
check the ``h2`` version; the extension never enables HTTP/2). ``probe`` itself needs nothing of it.

``defer_package_init("urllib3.http2")``, called before urllib3 is imported, registers that package
without running its ``__init__``: its submodules (``probe``) load from their real location as
usual, and the first time anything asks for a name the ``__init__`` defines
(``inject_into_urllib3``...), the ``__init__`` runs after all, so nothing breaks if a later
urllib3 needs more of it (it then costs what it costs today; the unit test says so). If urllib3
has no such package, or it is already imported, nothing happens.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
import types
from typing import Any

HTTP2_PACKAGE = "urllib3.http2"
CA_BUNDLE = "cacert.pem"
# Imported at the top of modules the extension needs and used only on paths it rarely or never
# takes, so loaded on first use instead: http.server's html (error pages' html.escape; it pulls in
# html.entities, ~330 KiB of heap) and shutil (SimpleHTTPRequestHandler's copies, ~200 KiB);
# logging's traceback (with linecache, tokenize, textwrap, ~250 KiB: only to format an exception).
LAZY_STDLIB = ("html", "shutil", "traceback")


def install() -> None:
    """Everything this module defers; call before urllib3 or http.server is imported (twice is fine)."""
    defer_package_init(HTTP2_PACKAGE)
    for name in LAZY_STDLIB:
        defer_package_init(name)


def certifi_bundle() -> str:
    """Path of certifi's CA bundle without importing certifi: ``import certifi`` loads
    ``importlib.resources`` and with it zipfile, tempfile and shutil (~1 MiB of RSS) to find a file
    that sits next to its ``__init__``. Only a certifi that is not a plain directory (zipped) is
    imported and asked."""
    try:
        spec = importlib.util.find_spec("certifi")
        origin = spec.origin if spec is not None else None
    except (ImportError, ValueError):
        origin = None
    if origin:
        path = os.path.join(os.path.dirname(origin), CA_BUNDLE)
        if os.path.isfile(path):
            return path
    import certifi

    return str(certifi.where())


def defer_package_init(name: str) -> bool:
    """Register module or package ``name`` with its code (a package's ``__init__``) deferred until
    a name it defines is asked for; a package's submodules load as usual meanwhile. True if it was
    registered. Imports nothing of a parent package. (``importlib.util.LazyLoader`` cannot do this
    on Python 3.11: the ``import`` statement itself reads ``__spec__``, which loads the module.)"""
    if name in sys.modules:
        return False
    parent, _, child = name.rpartition(".")
    try:
        if parent:
            parent_spec = importlib.util.find_spec(parent) if parent not in sys.modules else sys.modules[parent].__spec__
            locations = parent_spec.submodule_search_locations if parent_spec is not None else None
            spec = importlib.machinery.PathFinder.find_spec(name, list(locations)) if locations else None
        else:
            spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return False
    if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
        return False  # no such module (a later urllib3 may have none), or not one from a file
    module = importlib.util.module_from_spec(spec)
    lock = threading.RLock()
    state = {"ran": False}

    def __getattr__(attr: str) -> Any:  # PEP 562: only for names the module does not have yet
        if attr.startswith("__") and attr != "__all__":
            raise AttributeError(attr)
        if spec.submodule_search_locations is not None:
            try:  # a submodule (``from .http2 import probe``): load it from the package's real path
                return importlib.import_module("%s.%s" % (name, attr))
            except ModuleNotFoundError as exc:
                if exc.name != "%s.%s" % (name, attr):
                    raise
        with lock:  # a name the __init__ defines: run it now, once
            if not state["ran"]:
                state["ran"] = True
                spec.loader.exec_module(module)  # type: ignore[union-attr]
        try:
            return module.__dict__[attr]
        except KeyError:
            raise AttributeError("module %r has no attribute %r" % (name, attr)) from None

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules[name] = module
    if parent and parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return True


def bind_parent(name: str) -> None:
    """After the parent package is imported: make ``parent.child`` point at the registered module
    (the import system sets that attribute only for modules it loads itself)."""
    parent, _, child = name.rpartition(".")
    module = sys.modules.get(name)
    owner = sys.modules.get(parent)
    if isinstance(module, types.ModuleType) and owner is not None and not hasattr(owner, child):
        setattr(owner, child, module)
