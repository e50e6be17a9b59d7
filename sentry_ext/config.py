"""The only module that reads the environment: a frozen Config built once at start-up."""

from __future__ import annotations

import os

from .dsn import Dsn, DsnError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms of start-up, and this module loads before the first /event/next
    from typing import Any, Mapping, Optional, Tuple

FLUSH_MODES = ("end", "background", "adaptive")
DEFAULT_PORT = 5333
DEFAULT_TELEMETRY_PORT = 5334
MIB = 1024 * 1024


class ConfigError(ValueError):
    """A setting that cannot be used; the extension turns inert and logs it."""


class Config:
    """Every setting of the extension; see the README's configuration table.

    Immutable, keyword-constructed; ``repr`` hides the DSN and the proxy URL. A plain class rather
    than a dataclass: ``dataclasses`` costs ~20 ms of start-up before the first ``/event/next``.
    """

    dsn: Optional[Dsn]
    problem: Optional[str]  # why the extension is inert, or None
    runtime_api: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_bytes: int = 4 * MIB
    queue_max_items: int = 1000
    queue_max_bytes: int = 8 * MIB
    flush_mode: str = "end"
    flush_timeout_ms: int = 2000
    deadline_margin_ms: int = 200
    senders: int = 4  # the fewest sender threads (kept when idle)
    max_inflight: int = 64  # the most: concurrent upstream requests while a backlog calls for them
    connect_timeout_ms: int = 2000
    read_timeout_ms: int = 5000
    max_attempts: int = 10
    client_timeout_s: float = 10.0
    max_connections: int = 64
    telemetry_host: str = "sandbox.localdomain"
    telemetry_port: int = DEFAULT_TELEMETRY_PORT
    spool_dir: str = "/tmp/sentry-lambda-extension"
    spool_max_bytes: int = 16 * MIB
    spool_max_age_s: int = 6 * 3600
    log_level: str = "INFO"
    ca_file: Optional[str] = None
    proxy_url: Optional[str] = None
    no_proxy: str = ""
    adaptive_window: int = 20
    adaptive_gap_s: float = 10.0
    function_name: str = ""

    def __init__(self, **values: Any) -> None:
        missing = [name for name in _REQUIRED if name not in values]
        unknown = [name for name in values if name not in _FIELDS]
        if missing or unknown:
            raise TypeError("Config() missing %s, unknown %s" % (missing, unknown))
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is immutable (cannot set %r)" % name)

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Config is immutable (cannot delete %r)" % name)

    def _values(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)

    def __eq__(self, other: object) -> bool:
        return other.__class__ is self.__class__ and self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return "Config(%s)" % ", ".join("%s=%r" % (name, getattr(self, name)) for name in _FIELDS if name not in _HIDDEN)

    @property
    def active(self) -> bool:
        return self.dsn is not None and self.problem is None

    def describe(self) -> str:
        """One log-safe line with the effective settings."""
        return "upstream=%s port=%d flush=%s senders=%d-%d queue=%d/%dB body_cap=%dB" % (
            self.dsn.masked() if self.dsn else "-", self.port, self.flush_mode, min(self.senders, self.max_inflight),
            self.max_inflight, self.queue_max_items, self.queue_max_bytes, self.max_body_bytes)


_FIELDS = tuple(Config.__annotations__)  # in declaration order
_REQUIRED = tuple(name for name in _FIELDS if name not in Config.__dict__)
_HIDDEN = ("dsn", "proxy_url")  # secrets stay out of repr


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError("%s must be an integer, got %r" % (name, raw)) from None
    if not lo <= value <= hi:
        raise ConfigError("%s must be between %d and %d, got %d" % (name, lo, hi, value))
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: Tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        raise ConfigError("%s must be one of %s, got %r" % (name, "/".join(choices), raw))
    return raw


def _first(env: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return ""


def load(env: Optional[Mapping[str, str]] = None) -> Config:
    """Build the Config from ``env`` (default ``os.environ``); never raises.

    A bad value makes the extension inert: ``problem`` says why, in one line.
    """
    env = os.environ if env is None else env
    runtime_api = env.get("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")
    try:
        return _load(env, runtime_api)
    except (ConfigError, DsnError) as exc:
        return Config(dsn=None, problem=str(exc), runtime_api=runtime_api,
                      port=_safe_port(env), log_level=_safe_level(env))


def _safe_port(env: Mapping[str, str]) -> int:
    try:
        return _int(env, "SENTRY_EXT_PORT", DEFAULT_PORT, 1, 65535)
    except ConfigError:
        return DEFAULT_PORT


def _safe_level(env: Mapping[str, str]) -> str:
    level = env.get("SENTRY_EXT_LOG_LEVEL", "").strip().upper()
    return level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO"


def _load(env: Mapping[str, str], runtime_api: str) -> Config:
    raw_dsn = env.get("SENTRY_DSN", "").strip()
    if not raw_dsn:
        raise ConfigError("SENTRY_DSN is not set")
    dsn = Dsn.parse(raw_dsn)
    upstream = env.get("SENTRY_EXT_UPSTREAM", "").strip()
    if upstream:
        dsn = dsn.with_upstream(upstream)
    proxy_url = _first(env, "HTTPS_PROXY", "https_proxy") if dsn.scheme == "https" else _first(
        env, "HTTP_PROXY", "http_proxy")
    cfg = Config(
        dsn=dsn,
        problem=None,
        runtime_api=runtime_api,
        port=_int(env, "SENTRY_EXT_PORT", DEFAULT_PORT, 1, 65535),
        max_body_bytes=_int(env, "SENTRY_EXT_MAX_BODY_BYTES", 4 * MIB, 1024, 200 * MIB),
        queue_max_items=_int(env, "SENTRY_EXT_QUEUE_MAX_ITEMS", 1000, 1, 100000),
        queue_max_bytes=_int(env, "SENTRY_EXT_QUEUE_MAX_BYTES", 8 * MIB, 64 * 1024, 512 * MIB),
        flush_mode=_choice(env, "SENTRY_EXT_FLUSH", "end", FLUSH_MODES),
        flush_timeout_ms=_int(env, "SENTRY_EXT_FLUSH_TIMEOUT_MS", 2000, 0, 900000),
        deadline_margin_ms=_int(env, "SENTRY_EXT_DEADLINE_MARGIN_MS", 200, 10, 10000),
        senders=_int(env, "SENTRY_EXT_SENDERS", 4, 1, 32),
        max_inflight=_int(env, "SENTRY_EXT_MAX_INFLIGHT", 64, 1, 256),
        connect_timeout_ms=_int(env, "SENTRY_EXT_CONNECT_TIMEOUT_MS", 2000, 10, 60000),
        read_timeout_ms=_int(env, "SENTRY_EXT_READ_TIMEOUT_MS", 5000, 10, 120000),
        max_attempts=_int(env, "SENTRY_EXT_MAX_ATTEMPTS", 10, 1, 100),
        client_timeout_s=_int(env, "SENTRY_EXT_CLIENT_TIMEOUT_MS", 10000, 100, 600000) / 1000.0,
        max_connections=_int(env, "SENTRY_EXT_MAX_CONNECTIONS", 64, 1, 4096),
        telemetry_host=env.get("SENTRY_EXT_TELEMETRY_HOST", "").strip() or "sandbox.localdomain",
        telemetry_port=_int(env, "SENTRY_EXT_TELEMETRY_PORT", DEFAULT_TELEMETRY_PORT, 1, 65535),
        spool_dir=env.get("SENTRY_EXT_SPOOL_DIR", "").strip() or "/tmp/sentry-lambda-extension",
        spool_max_bytes=_int(env, "SENTRY_EXT_SPOOL_MAX_BYTES", 16 * MIB, 0, 512 * MIB),
        spool_max_age_s=_int(env, "SENTRY_EXT_SPOOL_MAX_AGE_S", 6 * 3600, 1, 30 * 86400),
        log_level=_safe_level(env),
        ca_file=env.get("SSL_CERT_FILE", "").strip() or None,
        proxy_url=proxy_url or None,
        no_proxy=_first(env, "NO_PROXY", "no_proxy"),
        adaptive_window=_int(env, "SENTRY_EXT_ADAPTIVE_WINDOW", 20, 2, 1000),
        adaptive_gap_s=_int(env, "SENTRY_EXT_ADAPTIVE_GAP_MS", 10000, 1, 3600000) / 1000.0,
        function_name=env.get("AWS_LAMBDA_FUNCTION_NAME", ""),
    )
    if cfg.telemetry_port in (cfg.port, 9001):
        raise ConfigError("SENTRY_EXT_TELEMETRY_PORT must differ from SENTRY_EXT_PORT and 9001 (reserved)")
    return cfg
