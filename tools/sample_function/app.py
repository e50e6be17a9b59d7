"""Sample AWS Lambda function instrumented with the real sentry-sdk.

Deploy it with the handler ``app.handler`` next to the sentry-lambda-extension layer. The SDK is
initialised once, at import (cold start), from ``SENTRY_DSN``; when the extension runs, that DSN
points at the extension on localhost and the extension forwards everything to Sentry.

The invocation payload (a JSON object) chooses what the function does; every key is optional::

    {}                          capture one handled ValueError (the default)
    {"capture": false}          do not capture that exception
    {"messages": 3}             also send 3 messages with capture_message
    {"sleep_s": 2.5}            sleep that long before returning (e.g. to hit the timeout)
    {"raise": true}             let a RuntimeError escape; AwsLambdaIntegration reports it
    {"allocate_mb": 512}        allocate that much, 16 MB every 10 ms (to exceed the memory size)
    {"exit": 3}                 flush the SDK, then end the runtime process with os._exit(3)
    {"say": "hi"}               print "print hi", log warning "warning hi" and error "error hi" with
                                its traceback (logging.exception: one multi-line record)
    {"lines": 1000}             print that many lines (function logs; the logs benchmark)

With ``SAMPLE_INIT_MESSAGE`` set it also captures one message at import (during Init).

It returns ``{"event_ids": [...], "request_id": "<aws request id>"}``. AwsLambdaIntegration
also records one transaction per invocation (``traces_sample_rate=1.0``) and flushes the SDK
before the runtime posts the result.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List

import sentry_sdk
from sentry_sdk.integrations.aws_lambda import AwsLambdaIntegration

logger = logging.getLogger(__name__)

#: Upper bounds so a payload cannot make the function loop or sleep forever.
MAX_MESSAGES = 1000
MAX_LINES = 100000
MAX_SLEEP_S = 900.0  # Lambda's maximum timeout
MAX_ALLOCATE_MB = 10240  # Lambda's largest memory size
ALLOCATE_STEP_MB = 16

sentry_sdk.init(
    dsn=os.environ.get("SENTRY_DSN"),
    integrations=[AwsLambdaIntegration()],
    traces_sample_rate=1.0,
    environment=os.environ.get("SENTRY_ENVIRONMENT", "sample"),
    release=os.environ.get("SENTRY_RELEASE"),
    send_default_pii=False,
)

if os.environ.get("SAMPLE_INIT_MESSAGE"):
    # Something reported during Init (e.g. a warning at import): sent before a SnapStart snapshot,
    # so the extension holds upstream connections in it.
    sentry_sdk.capture_message("sample message at init")
    try:
        from snapshot_restore_py import register_before_snapshot

        register_before_snapshot(sentry_sdk.flush)  # what the SnapStart docs advise: flush before the snapshot
    except ImportError:  # not a runtime with SnapStart hooks
        pass


def _capture_sample_error(request_id: str) -> str | None:
    """Raise and catch a ValueError, report it, and return the event id."""
    try:
        raise ValueError(f"sample error for request {request_id}")
    except ValueError as exc:
        return sentry_sdk.capture_exception(exc)


def handler(event: Any, context: Any) -> Dict[str, Any]:
    """Lambda entry point; see the module docstring for the payload keys."""
    options: Dict[str, Any] = event if isinstance(event, dict) else {}
    request_id = str(getattr(context, "aws_request_id", "unknown"))
    event_ids: List[str] = []

    if options.get("capture", True):
        event_id = _capture_sample_error(request_id)
        if event_id:
            event_ids.append(event_id)

    messages = max(0, min(int(options.get("messages", 0) or 0), MAX_MESSAGES))
    for index in range(messages):
        event_id = sentry_sdk.capture_message(
            f"sample message {index + 1}/{messages} for request {request_id}"
        )
        if event_id:
            event_ids.append(event_id)

    say = options.get("say")
    if say:
        print(f"print {say}")
        logger.warning("warning %s", say)
        try:
            raise KeyError(say)
        except KeyError:
            logger.exception("error %s", say)

    for index in range(max(0, min(int(options.get("lines", 0) or 0), MAX_LINES))):
        print(f"line {index} of the function's output, with some words to make it look like a real log line")

    sleep_s = options.get("sleep_s")
    if sleep_s:
        # The function's own work (used to run into the Lambda timeout), not a test settle.
        time.sleep(max(0.0, min(float(sleep_s), MAX_SLEEP_S)))

    allocate_mb = max(0, min(int(options.get("allocate_mb", 0) or 0), MAX_ALLOCATE_MB))
    held = []
    for _ in range(allocate_mb // ALLOCATE_STEP_MB):
        held.append(b"\x01" * (ALLOCATE_STEP_MB << 20))  # touched pages: resident, like real data
        time.sleep(0.01)  # a leak grows over time; Lambda's limit catches it on the way up

    if options.get("exit") is not None:
        sentry_sdk.flush(timeout=2.0)
        os._exit(int(options["exit"]))

    if options.get("raise"):
        logger.info("raising on purpose for request %s", request_id)
        raise RuntimeError(f"sample unhandled error for request {request_id}")

    return {"event_ids": event_ids, "request_id": request_id}
