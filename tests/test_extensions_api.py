"""The raw-socket Lambda API client against a real loopback server speaking HTTP/1.1 variants."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any, List, Tuple

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


class _Api:
    """Stands in for the emulator behind tools/emulator's real HTTP server: answers register and next."""

    def __init__(self) -> None:
        self.calls: List[str] = []

    def _handle(self, method: str, path: str, headers: object, body: bytes) -> object:
        from tools.emulator.server import Reply

        self.calls.append(path.rsplit("/", 1)[-1])
        if path.endswith("/register"):
            return Reply(200, {"Lambda-Extension-Identifier": "abc"}, b'{"functionName": "fn"}')
        if path.endswith("/error"):
            return Reply(202, {}, b'{"status":"OK"}')
        return Reply(200, {"Content-Type": "application/json"},
                     json.dumps({"eventType": "INVOKE", "requestId": str(len(self.calls))}).encode())


def _counting_emulator_server() -> Tuple[Any, List[object]]:
    from tools.emulator.server import ApiServer

    accepted: List[object] = []

    class Counting(ApiServer):
        def process_request(self, request: object, client_address: object) -> None:
            accepted.append(client_address)
            super().process_request(request, client_address)

    server = Counting(_Api())  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, accepted


def test_one_kept_connection_carries_every_call_to_the_emulator() -> None:
    server, accepted = _counting_emulator_server()
    try:
        api = LambdaApi("127.0.0.1:%d" % server.server_address[1])
        api.register("my-ext")
        ids = [api.next_event()["requestId"] for _ in range(5)]
        api.report_error("exit", "Extension.UnexpectedError", "boom")
        assert ids == ["2", "3", "4", "5", "6"]
        assert len(accepted) == 1  # one TCP connection, not one per call (a handshake each, in our CPU)
    finally:
        server.shutdown()
        server.server_close()


class ClosingServer:
    """HTTP/1.1 on loopback that can close a kept connection between replies, or mid-reply."""

    def __init__(self, script: List[str]) -> None:
        self.script = list(script)  # per request: "keep", "close" (after the reply), "cut" (mid-reply), "drop"
        self.connections = 0
        self.requests: List[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.script:
            conn, _ = self.sock.accept()
            self.connections += 1
            try:
                self._serve_connection(conn)
            except OSError:  # the client reset it (closed with a reply unread)
                pass
            finally:
                conn.close()

    def _serve_connection(self, conn: socket.socket) -> None:
        while self.script:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            if not data:
                break
            self.requests.append(data)
            action = self.script.pop(0)
            body = json.dumps({"eventType": "INVOKE", "requestId": str(len(self.requests))}).encode()
            reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            if action == "drop":  # read the request, close without a byte of reply
                break
            conn.sendall(reply[:20] if action == "cut" else reply)
            if action != "keep":
                break


def test_a_kept_connection_closed_between_calls_is_replaced_once_without_error() -> None:
    server = ClosingServer(["keep", "close", "keep", "keep"])
    api = LambdaApi("127.0.0.1:%d" % server.port)
    api.extension_id = "abc"
    sent: List[int] = []
    ids = [api.next_event(on_sent=lambda: sent.append(1))["requestId"] for _ in range(4)]
    assert ids == ["1", "2", "3", "4"] and len(sent) == 4  # on_sent once per call, resend or not
    assert server.connections == 2 and len(server.requests) == 4  # the resent request reached the server once


def test_a_reply_cut_mid_way_or_a_fresh_connection_closed_is_an_error_not_a_resend() -> None:
    server = ClosingServer(["keep", "cut", "drop", "keep"])
    api = LambdaApi("127.0.0.1:%d" % server.port)
    api.extension_id = "abc"
    assert api.next_event()["requestId"] == "1"
    with pytest.raises(LambdaApiError):  # a byte of the reply came: never sent again
        api.next_event()
    with pytest.raises(LambdaApiError):  # a fresh connection closed with no reply: an error, as before
        api.next_event()
    assert api.next_event()["requestId"] == "4"
    assert server.connections == 3 and len(server.requests) == 4


def test_an_exception_during_the_wait_drops_the_kept_connection() -> None:
    class Stop(BaseException):
        pass

    def stop() -> None:
        raise Stop()

    server = ClosingServer(["keep", "keep", "keep"])
    api = LambdaApi("127.0.0.1:%d" % server.port)
    api.extension_id = "abc"
    assert api.next_event()["requestId"] == "1"
    with pytest.raises(Stop):  # as StopSignal from the signal handler, with the reply still to come
        api.next_event(on_sent=stop)
    assert api.next_event()["requestId"] == "3"  # on a fresh connection: the old one's reply is never read
    assert server.connections == 2
