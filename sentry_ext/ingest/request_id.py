"""Which Lambda request an SDK envelope is about, read from the envelope's own payload.

The SDKs' Lambda integrations write the AWS request id into every event and transaction:
sentry-python as ``extra.lambda.aws_request_id``, the JavaScript SDK as
``contexts["aws.lambda"].aws_request_id``. The extension otherwise knows the running request only
from the INVOKE its lifecycle loop reads, and Lambda hands INVOKE to the runtime and the extension
at once: in ``background`` mode the SDK's envelopes of a request can reach the ingest before the
loop has read that request's INVOKE. Decoding a body costs CPU: callers ask only when they must.
"""

from __future__ import annotations

import re
from typing import Optional

from ..protocol.envelope import EnvelopeError
from ..protocol.body import decode_body
from ..delivery.request import Request
from ..awslambda.telemetry_records import request_id

DECODE_LIMIT = 1024 * 1024  # decoded bytes looked through (a larger body: not looked into)
_AWS_REQUEST_ID = re.compile(rb'"aws_request_id"\s*:\s*"([^"\\]{1,64})"')


def aws_request_id(req: Request, decoded: Optional[bytes] = None) -> Optional[str]:
    """The AWS request id the envelope's events name (the first one), or None. ``decoded``: the
    body already decoded whole (``header_and_body``), if it was."""
    try:
        body = decoded if decoded is not None else decode_body(req.body, req.encoding, DECODE_LIMIT)
    except EnvelopeError:
        return None
    match = _AWS_REQUEST_ID.search(body)
    return request_id(match.group(1).decode("ascii", "replace")) if match else None
