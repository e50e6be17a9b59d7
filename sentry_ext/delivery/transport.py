"""Sends one request upstream over a shared urllib3 pool; knows nothing of threads or queues."""

from __future__ import annotations

import enum
import errno
import http.client
import logging
import queue
import socket
import ssl
import threading
from typing import Any, Dict, Mapping, Optional, Tuple

from ..util import lean_imports
from ..util.lean_imports import HTTP2_PACKAGE, bind_parent, certifi_bundle

lean_imports.install()  # before urllib3: keeps importlib.metadata out (lean_imports.py)

import urllib3  # noqa: E402
from urllib3.connection import HTTPConnection, HTTPSConnection, _get_default_user_agent  # noqa: E402
from urllib3.exceptions import HTTPError, ProtocolError, ProxyError, SSLError  # noqa: E402
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError  # noqa: E402

from ..config import Config  # noqa: E402
from ..util.records import Record  # noqa: E402
from . import http1  # noqa: E402
from .request import Request  # noqa: E402
from .tls import client_context, keep_session  # noqa: E402

bind_parent(HTTP2_PACKAGE)

log = logging.getLogger(__name__)

class Outcome(enum.Enum):
    """What one send attempt came to, and so what the forwarder does next."""

    OK = "ok"
    RETRY = "retry"                # network failure, timeout, 5xx: safe to send again
    # The connection died under us: resend at once. Closed during a freeze before our request could
    # be read; or, with ``maybe_delivered``, after it may have been (a resend may duplicate it).
    STALE = "stale"
    SEND_ERROR = "send_error"      # 4xx other than 429: upstream refused this request for good
    RATE_LIMITED = "ratelimited"   # 429: upstream counted the drop itself


class Result(Record):
    __slots__ = ("outcome", "status", "headers", "error", "maybe_delivered")

    def __init__(self, outcome: Outcome, status: int = 0, headers: Optional[Mapping[str, str]] = None,
                 error: str = "", maybe_delivered: bool = False) -> None:
        self.outcome = outcome
        self.status = status
        self.headers = headers
        self.error = error
        # The request went out but no (whole) reply came: upstream may have accepted it, so a
        # resend may duplicate it.
        self.maybe_delivered = maybe_delivered


def pool_options(cfg: Config) -> Dict[str, Any]:
    """Keyword arguments for the connection pool (pure: TLS, timeouts and pool size are testable)."""
    return {
        "maxsize": cfg.max_inflight,  # one connection per request in flight, opened only when needed
        "block": False,
        "cert_reqs": "CERT_REQUIRED",
        "ca_certs": cfg.ca_file or certifi_bundle(),
        "retries": False,
        "timeout": urllib3.Timeout(connect=cfg.connect_timeout_ms / 1000.0,
                                   read=cfg.read_timeout_ms / 1000.0),
    }


def proxy_bypassed(host: str, port: Optional[int], no_proxy: str) -> bool:
    """True if ``NO_PROXY`` (comma list: ``*``, hosts, ``.suffix``, ``host:port``) covers host."""
    host = host.lower()
    for entry in no_proxy.replace(" ", "").lower().split(","):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.partition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and port is not None and entry_port != str(port):
            continue
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def make_pool(cfg: Config) -> Tuple[Any, bool]:
    """The connection pool for the one upstream, and whether it wants absolute URLs.

    There is exactly one upstream, so a single pool (not a PoolManager looking the pool up per
    request) saves ~20 % CPU per request. Through an ``http://`` proxy the request line must carry
    the absolute URL, so that case goes through the ProxyManager.
    """
    dsn = cfg.dsn
    assert dsn is not None
    options = pool_options(cfg)
    if dsn.scheme == "https":
        options = _tls_options(options, dsn.host)
    if cfg.proxy_url and not proxy_bypassed(dsn.host, dsn.port, cfg.no_proxy):
        log.info("sending upstream through proxy %s", cfg.proxy_url.split("@")[-1])
        manager = urllib3.ProxyManager(cfg.proxy_url, num_pools=1, **options)
        manager.pool_classes_by_scheme = _TRACKED_POOLS
        if dsn.scheme == "http":
            return manager, True
        return manager.connection_from_url(dsn.origin), False
    if dsn.scheme == "http":
        options.pop("cert_reqs")
        options.pop("ca_certs")
    pool = urllib3.connection_from_url(dsn.origin, **options)
    pool.ConnectionCls = _TRACKED_POOLS[dsn.scheme].ConnectionCls
    return pool, False


# -- how far a request got before its connection failed --------------------------------------


class _Attempt(threading.local):
    """The calling thread's request in progress (a thread sends one at a time): whether its
    connection had served a reply before, the request was written whole, a reply head came in."""

    reused = False
    written = False
    head = False


_ATTEMPT = _Attempt()


class _Response(http.client.HTTPResponse):
    def begin(self) -> None:
        super().begin()
        _ATTEMPT.head = True  # status line and headers read: a reply cut off from here was sent


class _Tracked:
    """Mixin for urllib3's connection classes: records the attempt's progress in ``_ATTEMPT``."""

    response_class = _Response
    served = 0  # replies this connection has read

    def connect(self) -> None:
        # A new socket: urllib3 reconnects a dropped connection's object (for plain HTTP from
        # inside request(), after it read ``served``).
        self.served = 0
        _ATTEMPT.reused = False
        super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _ATTEMPT.reused, _ATTEMPT.written, _ATTEMPT.head = self.served > 0, False, False
        super().request(*args, **kwargs)  # type: ignore[misc]
        _ATTEMPT.written = True

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        response = super().getresponse(*args, **kwargs)  # type: ignore[misc]
        self.served += 1
        return response


class _TrackedHTTPConnection(_Tracked, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _TrackedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


_TRACKED_POOLS = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


def may_have_been_read(exc: BaseException) -> bool:
    """After the connection failed under the current thread's request (``exc``): False only if
    upstream cannot have read the whole request (it was not written whole, or a connection that had
    served a reply before ended with no reply byte at all, the way an idle one closed while we were
    frozen does); True if a resend may duplicate it (a reply cut off, or a fresh connection ended
    after the request went out)."""
    if not _ATTEMPT.written:
        return False
    if _ATTEMPT.head or not _ATTEMPT.reused:
        return True
    cause: Optional[BaseException] = exc
    for _ in range(5):  # urllib3 wraps the socket error once or twice; the chain is short
        if cause is None:
            return True
        if isinstance(cause, (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return False  # RemoteDisconnected (no status line) is a ConnectionResetError
        inner = next((a for a in cause.args if isinstance(a, BaseException)), None)
        cause = inner or cause.__cause__ or cause.__context__
    return True


def _tls_options(options: Dict[str, Any], host: str) -> Dict[str, Any]:
    """``options`` with one shared TLS context (tls.py) for the upstream ``host`` in place of the CA
    file urllib3 would load into a new context for every connection. If the CA file cannot be loaded,
    urllib3's own handling stays (each connection then fails with the reason, as before)."""
    try:
        context = client_context(options["ca_certs"], host)
    except (OSError, ssl.SSLError) as exc:
        log.warning("cannot load the CA bundle %s (%s): upstream connections will fail", options["ca_certs"], exc)
        return options
    out = dict(options)
    del out["ca_certs"]
    out["ssl_context"] = context
    return out


class Transport:
    """POSTs accepted requests to the configured upstream, byte for byte."""

    def __init__(self, cfg: Config) -> None:
        if cfg.dsn is None:
            raise ValueError("Transport needs a DSN")
        self.cfg = cfg
        self.dsn = cfg.dsn
        self.pool, self._absolute = make_pool(cfg)
        self._read_s = cfg.read_timeout_ms / 1000.0
        self._connect_s = cfg.connect_timeout_ms / 1000.0
        self._timeout = urllib3.Timeout(connect=self._connect_s, read=self._read_s)
        self._fixed = http1.fixed_head(self.pool) if not self._absolute and self.pool.proxy is None else None
        self._agent = _get_default_user_agent()

    def read_timeout_for(self, read_timeout: Optional[float] = None) -> float:
        """The read timeout (s) ``send`` applies when asked to cap it at ``read_timeout``."""
        if read_timeout is None or read_timeout >= self._read_s:
            return self._read_s
        return max(0.05, read_timeout)

    def send(self, req: Request, read_timeout: Optional[float] = None) -> Result:
        """Send ``req``; ``read_timeout`` (seconds) caps the configured one, e.g. near a deadline."""
        timeout = self._timeout
        if read_timeout is not None and read_timeout < self._read_s:
            capped = self.read_timeout_for(read_timeout)
            timeout = urllib3.Timeout(connect=min(self._connect_s, capped), read=capped)
        target = self.dsn.api_url(req.upstream_path) if self._absolute else self.dsn.path + req.upstream_path
        _ATTEMPT.reused, _ATTEMPT.written, _ATTEMPT.head = False, False, False
        head = None
        if self._fixed is not None:
            head = http1.encode_head(target, self._fixed, req.headers, len(req.body), self._agent)
        try:
            if head is not None:
                reply = self._exchange(target, head, req.body, timeout)
                return _result(reply.status, reply.headers, reply.body)
            resp = self.pool.urlopen("POST", target, body=req.body, headers=req.headers,
                                     retries=False, redirect=False, preload_content=True, timeout=timeout)
        except ReadTimeoutError as exc:
            return Result(Outcome.RETRY, error=_describe(exc), maybe_delivered=True)
        except (ConnectTimeoutError, NewConnectionError, ProxyError) as exc:
            return Result(Outcome.RETRY, error=_describe(exc))
        except SSLError as exc:
            # The upstream ended the TLS connection under us. A connection it closed while we were
            # frozen fails so when it was opened just before the freeze and our request had not
            # gone out yet: no pool check ran between the handshake and the first write. Like a
            # pooled connection that died while frozen (ProtocolError below), not an upstream failure.
            if not closed_under_us(exc):
                return Result(Outcome.RETRY, error=_describe(exc))
            return Result(Outcome.STALE, error=_describe(exc), maybe_delivered=may_have_been_read(exc))
        except ProtocolError as exc:
            return Result(Outcome.STALE, error=_describe(exc), maybe_delivered=may_have_been_read(exc))
        except HTTPError as exc:
            return Result(Outcome.RETRY, error=_describe(exc))
        return _result(resp.status, resp.headers, resp.data)

    def _exchange(self, target: str, head: bytes, body: bytes, timeout: Any) -> http1.Reply:
        """One request on a pooled connection without urlopen (http1.py), raising what urlopen
        would raise (retries=False), so that ``send`` classifies every failure as before."""
        pool = self.pool
        conn = pool._get_conn()  # a pooled connection found dropped is closed here: connect anew
        try:
            fresh = conn.sock is None
            if fresh:
                conn.timeout = timeout.connect_timeout
                try:
                    conn.connect()  # _Tracked.connect: not reused
                except OSError as exc:  # a handshake's timeout is a read timeout to urllib3
                    raise _wrap(exc, pool, target, timeout.connect_timeout, False) from exc
            else:
                _ATTEMPT.reused = conn.served > 0
            sock, read_s = conn.sock, self._read_s if timeout is self._timeout else timeout.read_timeout
            if sock.gettimeout() != read_s:  # one ioctl when it changes, not three per request
                sock.settimeout(read_s)
            try:
                # One write on a warm connection; two on a new one, as urllib3's: a close just after
                # the handshake then fails the second, before the request went out whole (test_tls.py).
                if not fresh and len(body) < http1.JOIN_BELOW:
                    sock.sendall(head + body)
                else:
                    sock.sendall(head)
                    sock.sendall(body)
                _ATTEMPT.written = True
            except OSError as exc:  # urllib3 reads the reply after a reset or a broken pipe
                if isinstance(exc, ssl.SSLError) or exc.errno not in (errno.EPIPE, errno.EPROTOTYPE, errno.ECONNRESET):
                    raise _wrap(exc, pool, target, read_s, True) from exc
            try:
                reply = http1.read_reply(sock, _on_head)
            except OSError as exc:
                raise _wrap(exc, pool, target, read_s, False) from exc
            except http1.BadLength as exc:  # urllib3's InvalidHeader
                raise HTTPError(str(exc)) from exc
            except http.client.HTTPException as exc:
                raise ProtocolError("Connection broken: %r" % exc if _ATTEMPT.head else "Connection aborted.",
                                    exc) from exc
        except BaseException:
            conn.close()
            pool._put_conn(None)  # as urlopen: the slot opens a new connection next time
            raise
        conn.served += 1
        if fresh:
            keep_session(sock)  # a TLS 1.3 ticket came with (or before) the reply
        pool._put_conn(conn if reply.keep else conn.close())  # a closed one leaves None in its slot
        return reply

    def close_connections(self) -> None:
        """Close every idle pooled connection, keeping the pool and its TLS context (cheap), for the
        replies before a SnapStart snapshot; one in use now is closed after its own reply's call."""
        pools = [self.pool]
        if isinstance(self.pool, urllib3.PoolManager):
            pools = [self.pool.pools.get(key) for key in self.pool.pools.keys()]
        for pool in pools:
            idle = getattr(pool, "pool", None)  # urllib3's queue of idle connections (None: closed)
            if idle is None:
                continue
            taken = []
            for _ in range(idle.maxsize + 1):
                try:
                    taken.append(idle.get_nowait())
                except queue.Empty:
                    break
            for conn in taken:
                if conn is not None:
                    conn.close()
                try:
                    idle.put_nowait(None)  # an empty slot: the pool opens a new connection there
                except queue.Full:
                    break

    def drop_connections(self) -> None:
        """Forget every pooled connection (after a SnapStart restore they lead nowhere): later
        sends connect afresh. Connections in use are closed when they come back to the old pool."""
        old = self.pool
        self.pool, self._absolute = make_pool(self.cfg)
        if isinstance(old, urllib3.PoolManager):
            old.clear()
        else:
            old.close()


def _wrap(exc: OSError, pool: Any, target: str, seconds: float, writing: bool) -> Exception:
    """urllib3's exception for a socket error in its urlopen."""
    if isinstance(exc, ssl.SSLError):  # CertificateError included
        return SSLError(exc)
    if not writing and (isinstance(exc, socket.timeout) or exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)):
        return ReadTimeoutError(pool, target, "Read timed out. (read timeout=%s)" % seconds)
    return ProtocolError("Connection aborted.", exc)


def _on_head() -> None:
    _ATTEMPT.head = True


def _result(status: int, headers: Any, data: Optional[bytes]) -> Result:
    if 200 <= status < 300:
        return Result(Outcome.OK, status, headers)
    if status == 429:
        return Result(Outcome.RATE_LIMITED, status, headers, "HTTP 429")
    if status >= 500 or status == 408:
        return Result(Outcome.RETRY, status, headers, "HTTP %d" % status)
    body = (data or b"")[:200].decode("utf-8", "replace")
    return Result(Outcome.SEND_ERROR, status, headers, "HTTP %d %s" % (status, body))


def closed_under_us(exc: BaseException) -> bool:
    """True if urllib3's ``exc`` comes from the peer ending the TLS connection (an EOF or a
    close_notify), not from a failed verification or negotiation. During a handshake that is
    ambiguous (a server dropping new connections looks the same); the forwarder resends a STALE
    request at once only on its first attempt, and backs off after that."""
    cause: Optional[BaseException] = exc
    for _ in range(5):  # urllib3 wraps the ssl error once; the chain is short
        if cause is None:
            return False
        if isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return True
        inner = cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else None
        cause = inner or cause.__cause__ or cause.__context__
    return False


def _describe(exc: BaseException) -> str:
    text = "%s: %s" % (type(exc).__name__, exc)
    return text[:300]
