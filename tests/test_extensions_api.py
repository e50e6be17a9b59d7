"""The raw-socket Lambda API client against a real loopback server speaking HTTP/1.1 variants."""

from __future__ import annotations

import json
import socket
import threading
from typing import List

import pytest

from sentry_ext.awslambda.extensions_api import LambdaApi, LambdaApiError, telemetry_subscription


class OneShotServer:
    """Answers each connection with the next canned response and records the requests."""

    def __init__(self, responses: List[bytes]) -> None:
        self.responses = list(responses)
        self.requests: List[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for response in self.responses:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:  # the client went away mid-request
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        while len(body) < int(line.split(b":")[1]):
                            chunk = conn.recv(65536)
                            if not chunk:
                                break
                            body += chunk
                self.requests.append(head + b"\r\n\r\n" + body)
                conn.sendall(response)
        self.sock.close()


def test_register_next_and_errors() -> None:
    event = json.dumps({"eventType": "INVOKE", "requestId": "r", "deadlineMs": 1}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(event[i:i + 5]), event[i:i + 5]) for i in range(0, len(event), 5)) + b"0\r\n\r\n"
    server = OneShotServer([
        b'HTTP/1.1 200 OK\r\nLambda-Extension-Identifier: abc\r\nContent-Length: 22\r\n\r\n{"functionName": "fn"}',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
        b"HTTP/1.1 200 OK\r\n\r\n" + event,  # no length: read to EOF
        b'HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}',
        b'HTTP/1.1 403 Forbidden\r\nContent-Length: 15\r\n\r\n{"errorType":1}',
    ])
    api = LambdaApi("127.0.0.1:%d" % server.port)
    info = api.register("my-ext")
    assert api.extension_id == "abc" and info == {"functionName": "fn"}
    sent = []
    assert api.next_event(on_sent=lambda: sent.append(1))["requestId"] == "r" and sent == [1]
    assert api.next_event()["eventType"] == "INVOKE"
    api.report_error("exit", "Extension.UnexpectedError", "boom")
    with pytest.raises(LambdaApiError) as err:
        api.next_event()
    assert err.value.status == 403
    server.thread.join(5)
    register, _, _, error, _ = server.requests
    assert b"Lambda-Extension-Name: my-ext" in register and b'{"events": ["INVOKE", "SHUTDOWN"]}' in register
    assert b"Lambda-Extension-Identifier: abc" in error
    assert b"Lambda-Extension-Function-Error-Type: Extension.UnexpectedError" in error
    assert b"POST /2020-01-01/extension/exit/error" in error


def test_register_without_identifier_and_dead_server() -> None:
    server = OneShotServer([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"])
    with pytest.raises(LambdaApiError):
        LambdaApi("127.0.0.1:%d" % server.port).register("x")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LambdaApiError):
        LambdaApi("127.0.0.1:%d" % port).register("x")
    with pytest.raises(LambdaApiError):
        LambdaApi("no-port-here")


def test_telemetry_subscription_body_is_within_documented_ranges() -> None:
    body = telemetry_subscription("sandbox.localdomain", 5334, "/telemetry/" + "ab" * 16)
    assert body["types"] == ["platform"]  # never extension logs: logging from the listener would loop
    assert 1000 <= body["buffering"]["maxItems"] <= 10000
    assert 262144 <= body["buffering"]["maxBytes"] <= 1048576
    assert body["buffering"]["timeoutMs"] == 25
    assert body["destination"] == {"protocol": "HTTP", "URI": "http://sandbox.localdomain:5334/telemetry/" + "ab" * 16}


def test_telemetry_subscription_with_function_logs_never_takes_extension_logs() -> None:
    assert telemetry_subscription("h", 1, types=("platform", "function"))["types"] == ["platform", "function"]
    assert telemetry_subscription("h", 1, types=("platform", "function", "extension"))["types"] == ["platform", "function"]


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n{}",                       # not a number
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n{}",                        # negative
    b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n{}",                      # a non-ASCII digit
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # bad chunk size
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",  # negative chunk
    b"HTTP/1.1 2\xb200 OK\r\nContent-Length: 2\r\n\r\n{}",                     # bad status code
    b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"[" * 100000,       # nesting too deep
])
def test_malformed_replies_raise_lambda_api_error_only(response: bytes) -> None:
    server = OneShotServer([response])
    api = LambdaApi("127.0.0.1:%d" % server.port)
    api.extension_id = "abc"
    with pytest.raises(LambdaApiError) as err:
        api.next_event()
    assert err.value.status == 0 and not err.value.fatal  # a malformed reply is transient


def test_fatal_answers_are_4xx_and_500_only() -> None:
    assert [s for s in (0, 200, 400, 403, 404, 429, 500, 502, 503) if LambdaApiError("x", s).fatal] == \
        [400, 403, 404, 429, 500]
    for addr in ("127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1:\u0662", "127.0.0.1:0"):
        with pytest.raises(LambdaApiError):
            LambdaApi(addr)
