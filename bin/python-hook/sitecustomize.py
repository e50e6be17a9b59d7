"""Run at the function's Python start-up when bin/sentry-lambda-wrapper pointed SENTRY_DSN at the
extension: gives sentry-python the organisation id that the rewritten DSN's host no longer carries.

sentry-python 2.x reads the org id from an ``o<org>.`` DSN host, or from its ``org_id`` option,
which has no environment variable. So when ``sentry_sdk.consts`` is imported this sets the
option's default to ``SENTRY_EXT_ORG_ID`` (an ``org_id`` passed to ``sentry_sdk.init`` still
wins; SDKs without the option are left alone). Nothing is imported ahead of the function, and
any ``sitecustomize`` further down the path still runs. It must never break the function: every
failure is swallowed.
"""

import os
import sys

_TARGET = "sentry_sdk.consts"


def _set_default_org(module: object) -> None:
    options = getattr(module, "DEFAULT_OPTIONS", None)
    org = os.environ.get("SENTRY_EXT_ORG_ID", "")
    if isinstance(options, dict) and "org_id" in options and options["org_id"] is None and org.isdigit():
        options["org_id"] = org


class _OrgIdFinder:
    """A meta-path finder that only looks at ``sentry_sdk.consts``, and only once."""

    @classmethod
    def find_spec(cls, name: str, path: object = None, target: object = None) -> object:
        if name != _TARGET:
            return None
        try:
            sys.meta_path.remove(cls)
        except ValueError:
            pass
        try:
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                spec = find(name, path, target) if find is not None else None
                if spec is not None:
                    break
            else:
                return None
            loader = spec.loader
            exec_module = loader.exec_module

            def exec_and_patch(module: object) -> None:
                exec_module(module)
                try:
                    _set_default_org(module)
                except Exception:
                    pass

            loader.exec_module = exec_and_patch
            return spec
        except Exception:
            return None


def _chain() -> None:
    """Run the ``sitecustomize`` this one shadows, if any, and take this directory off the path."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec("sitecustomize", sys.path)
    if spec is not None and spec.loader is not None:
        del sys.modules["sitecustomize"]
        import importlib.util

        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


try:
    if os.environ.get("SENTRY_EXT_ORG_ID", "").isdigit() and _TARGET not in sys.modules:
        sys.meta_path.insert(0, _OrgIdFinder)
except Exception:
    pass
_chain()  # errors here are the shadowed sitecustomize's own: Python reports them as it would have
