"""Sends one request upstream over a shared urllib3 pool; knows nothing of threads or queues."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import certifi
import urllib3
from urllib3.exceptions import HTTPError, ProtocolError, ProxyError, SSLError
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from .config import Config
from .buffer import Request

log = logging.getLogger(__name__)

OK = "ok"
RETRY = "retry"            # network failure, timeout, 5xx: safe to send again
STALE = "stale"            # pooled connection died (e.g. closed during a freeze): resend at once
SEND_ERROR = "send_error"  # 4xx other than 429: upstream refused this request for good
RATE_LIMITED = "ratelimited"  # 429: upstream counted the drop itself


@dataclass
class Result:
    outcome: str
    status: int = 0
    headers: Optional[Mapping[str, str]] = None
    error: str = ""


def pool_options(cfg: Config) -> Dict[str, Any]:
    """Keyword arguments for the PoolManager (pure: TLS, timeouts and pool size are testable)."""
    return {
        "num_pools": 2,
        "maxsize": cfg.senders,
        "block": False,
        "cert_reqs": "CERT_REQUIRED",
        "ca_certs": cfg.ca_file or certifi.where(),
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


def make_pool(cfg: Config) -> urllib3.PoolManager:
    """A PoolManager, or a ProxyManager when a proxy applies to the upstream host."""
    options = pool_options(cfg)
    dsn = cfg.dsn
    if cfg.proxy_url and dsn is not None and not proxy_bypassed(dsn.host, dsn.port, cfg.no_proxy):
        log.info("sending upstream through proxy %s", cfg.proxy_url.split("@")[-1])
        return urllib3.ProxyManager(cfg.proxy_url, **options)
    return urllib3.PoolManager(**options)


class Transport:
    """POSTs accepted requests to the configured upstream, byte for byte."""

    def __init__(self, cfg: Config, pool: Optional[urllib3.PoolManager] = None) -> None:
        if cfg.dsn is None:
            raise ValueError("Transport needs a DSN")
        self.cfg = cfg
        self.dsn = cfg.dsn
        self.pool = pool if pool is not None else make_pool(cfg)

    def send(self, req: Request, read_timeout: Optional[float] = None) -> Result:
        """Send ``req``; ``read_timeout`` (seconds) caps the configured one, e.g. near a deadline."""
        read = self.cfg.read_timeout_ms / 1000.0
        connect = self.cfg.connect_timeout_ms / 1000.0
        if read_timeout is not None:
            read = max(0.05, min(read, read_timeout))
            connect = max(0.05, min(connect, read_timeout))
        url = self.dsn.api_url(req.upstream_path)
        try:
            resp = self.pool.urlopen("POST", url, body=req.body, headers=req.headers,
                                     retries=False, redirect=False, preload_content=True,
                                     timeout=urllib3.Timeout(connect=connect, read=read))
        except (ConnectTimeoutError, NewConnectionError, ReadTimeoutError, SSLError, ProxyError) as exc:
            return Result(RETRY, error=_describe(exc))
        except ProtocolError as exc:
            return Result(STALE, error=_describe(exc))
        except HTTPError as exc:
            return Result(RETRY, error=_describe(exc))
        status = resp.status
        headers = resp.headers
        if 200 <= status < 300:
            return Result(OK, status, headers)
        if status == 429:
            return Result(RATE_LIMITED, status, headers, "HTTP 429")
        if status >= 500 or status == 408:
            return Result(RETRY, status, headers, "HTTP %d" % status)
        body = (resp.data or b"")[:200].decode("utf-8", "replace")
        return Result(SEND_ERROR, status, headers, "HTTP %d %s" % (status, body))


def _describe(exc: BaseException) -> str:
    text = "%s: %s" % (type(exc).__name__, exc)
    return text[:300]
