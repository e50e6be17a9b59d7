"""End-to-end harness: the emulator running bin/sentry-lambda-extension beside the real
sentry-sdk function under the real awslambdaric, relaying to a fake upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from tools.emulator import Emulator, InvokeResult
from tools.fake_upstream import FakeUpstream
from tools.sandbox import EXTENSION_NAME, SAMPLE_FUNCTION, function_env, local_dsn, make_opt


def make_emulator(tmp: Path, upstream: FakeUpstream, spool: Optional[Path] = None,
                  runtime_env: Optional[Dict[str, str]] = None, **kwargs: Any) -> Emulator:
    """An Emulator whose function env points the extension at ``upstream`` and the SDK at the extension."""
    overrides = {k: v for k, v in kwargs.items() if k.isupper()}
    options = {k: v for k, v in kwargs.items() if not k.isupper()}
    env = function_env(upstream.dsn(), spool or tmp / "spool", **overrides)
    rt_env = {"SENTRY_DSN": local_dsn(upstream.dsn(), env["SENTRY_EXT_PORT"])}
    rt_env.update(runtime_env or {})
    options.setdefault("function_name", "e2e-function")
    options.setdefault("task_root", SAMPLE_FUNCTION)
    return Emulator(make_opt(tmp), env=env, runtime_env=rt_env, **options)


def event_ids(result: InvokeResult) -> List[str]:
    """Event ids the sample function reported capturing in this invocation."""
    return list(json.loads(result.response or b"{}").get("event_ids", []))


def ext_log(emu: Emulator) -> str:
    return emu.output(EXTENSION_NAME)


EXTENSION_SDK = "sentry.lambda.extension"  # the ``sdk.name`` of the events the extension makes itself


def extension_events(upstream: FakeUpstream) -> List[Dict[str, Any]]:
    """The events the extension made itself (failure events), as the upstream received them."""
    return [json.loads(p) for _, _, p in upstream.items("event")
            if json.loads(p).get("sdk", {}).get("name") == EXTENSION_SDK]


def telemetry_types(emu: Emulator) -> List[str]:
    """The types of the Telemetry API records the emulator sent, in order."""
    return [json.loads(item)["type"] for item in emu._sandbox.telemetry_log]
