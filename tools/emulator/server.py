"""The HTTP server all three APIs share (one port, like AWS_LAMBDA_RUNTIME_API): it reads the
request and hands ``(method, path, headers, body)`` to ``Emulator._handle``, which routes it."""

from __future__ import annotations

import http.server
import json
import logging
import socketserver
import sys
import urllib.parse
from typing import TYPE_CHECKING, Any, Dict, NamedTuple

from tools.netutil import BodyError, read_body

if TYPE_CHECKING:
    from tools.emulator.emulator import Emulator

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024


class Reply(NamedTuple):
    status: int
    headers: Dict[str, str]
    body: bytes


def json_reply(status: int, error_type: str, message: str) -> Reply:
    body = json.dumps({"errorMessage": message, "errorType": error_type}).encode()
    return Reply(status, {"Content-Type": "application/json"}, body)



class ApiServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64
    allow_reuse_address = True

    def __init__(self, emulator: "Emulator") -> None:
        self.emulator = emulator
        super().__init__(("127.0.0.1", 0), ApiHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A runtime worker killed at shutdown resets its keep-alive connection: routine.
        if isinstance(sys.exc_info()[1], OSError):
            logger.debug("api connection ended: %s", sys.exc_info()[1])
            return
        super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which may do a slow reverse lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class ApiHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        logger.debug("api %s: " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")


    def _read_body(self) -> bytes:
        return read_body(self.rfile, self.headers, MAX_BODY_BYTES)

    def _dispatch(self, method: str) -> None:
        try:
            body = self._read_body()
        except BodyError as exc:
            self._send(json_reply(400, "InvalidRequest", str(exc)))
            self.close_connection = True
            return
        path = urllib.parse.urlsplit(self.path).path
        try:
            reply = self.server.emulator._handle(method, path, self.headers, body)
        except Exception:  # a bug in the emulator must not kill the connection silently
            logger.exception("emulator API handler failed for %s %s", method, path)
            reply = json_reply(500, "Emulator.InternalError", "internal emulator error")
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if reply.body:
                self.wfile.write(reply.body)
        except OSError as exc:
            logger.debug("api client went away before the reply (%s %s): %s", self.command, self.path, exc)
            self.close_connection = True


