"""The only module that reads the environment: a frozen Config built once at start-up.

Every setting is one row of ``SETTINGS``; the loader, ``Config``'s defaults, validation and repr,
and the README check (tests/test_config.py) all read that table. To add a setting: add a row,
annotate the field on ``Config``, and document the variable in the README's configuration table.
"""

from __future__ import annotations

import os

from .protocol.dsn import Dsn, DsnError

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing: this module loads before the first /event/next (start-up budget: main.py)
    from typing import Any, Dict, List, Mapping, Optional, Tuple

FLUSH_MODES = ("end", "background", "adaptive")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOGS_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal")  # Sentry's levels (and "warning")
MIB = 1024 * 1024
ARCHITECTURES = ("x86_64", "arm64")
# Lambda sets no variable for it: the machine the extension runs on is the function's.
ARCHITECTURE = "arm64" if os.uname().machine.lower() in ("aarch64", "arm64") else "x86_64"

# (field, environment variable(s), default, check, meaning). ``check`` is ``(lo, hi)`` for an
# integer in that range, a tuple of choices (matched case-insensitively), or None for text. With
# several variables the first one set wins; a field without a variable is fixed. An unset or
# empty variable means the default.
SETTINGS = (
    ("runtime_api", "AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001", None, "Extensions/Telemetry API address"),
    ("init_type", "AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand", None, "execution model (see exec_model.py)"),
    ("host", None, "127.0.0.1", None, "ingest address (loopback only)"),
    ("port", "SENTRY_EXT_PORT", 5333, (1, 65535), "ingest port"),
    ("max_body_bytes", "SENTRY_EXT_MAX_BODY_BYTES", 4 * MIB, (1024, 200 * MIB), "largest SDK body"),
    ("queue_max_items", "SENTRY_EXT_QUEUE_MAX_ITEMS", 4000, (1, 100000), "queue bound in requests"),
    ("queue_max_bytes", "SENTRY_EXT_QUEUE_MAX_BYTES", 8 * MIB, (64 * 1024, 512 * MIB), "queue bound in bytes"),
    ("flush_mode", "SENTRY_EXT_FLUSH", "end", FLUSH_MODES, "when the queue is drained"),
    ("flush_timeout_ms", "SENTRY_EXT_FLUSH_TIMEOUT_MS", 2000, (0, 900000), "longest drain after an invocation"),
    ("deadline_margin_ms", "SENTRY_EXT_DEADLINE_MARGIN_MS", 200, (10, 10000), "taken off every deadline"),
    ("senders", "SENTRY_EXT_SENDERS", 4, (1, 32), "sender threads kept when idle (the fewest)"),
    ("max_inflight", "SENTRY_EXT_MAX_INFLIGHT", 64, (1, 256), "most concurrent upstream requests"),
    ("connect_timeout_ms", "SENTRY_EXT_CONNECT_TIMEOUT_MS", 2000, (10, 60000), "upstream connect timeout"),
    ("read_timeout_ms", "SENTRY_EXT_READ_TIMEOUT_MS", 5000, (10, 120000), "upstream read timeout"),
    ("max_attempts", "SENTRY_EXT_MAX_ATTEMPTS", 10, (1, 100), "attempts per request"),
    ("client_timeout_ms", "SENTRY_EXT_CLIENT_TIMEOUT_MS", 10000, (100, 600000), "silent SDK connection timeout"),
    ("max_connections", "SENTRY_EXT_MAX_CONNECTIONS", 64, (1, 4096), "concurrent SDK connections"),
    ("telemetry_host", "SENTRY_EXT_TELEMETRY_HOST", "sandbox.localdomain", None, "host in the subscription"),
    ("telemetry_port", "SENTRY_EXT_TELEMETRY_PORT", 5334, (1, 65535), "Telemetry API listener port"),
    ("spool_dir", "SENTRY_EXT_SPOOL_DIR", "/tmp/sentry-lambda-extension", None, "spool directory"),
    ("spool_max_bytes", "SENTRY_EXT_SPOOL_MAX_BYTES", 16 * MIB, (0, 512 * MIB), "spool size cap (0: off)"),
    ("spool_max_age_s", "SENTRY_EXT_SPOOL_MAX_AGE_S", 6 * 3600, (1, 30 * 86400), "oldest spooled request sent"),
    ("log_level", "SENTRY_EXT_LOG_LEVEL", "INFO", LOG_LEVELS, "log level (a bad one means INFO)"),
    ("ca_file", "SSL_CERT_FILE", None, None, "CA bundle (default: certifi's)"),
    ("no_proxy", ("NO_PROXY", "no_proxy"), "", None, "upstream hosts that skip the proxy"),
    ("adaptive_window", "SENTRY_EXT_ADAPTIVE_WINDOW", 20, (2, 1000), "adaptive: invocations looked at"),
    ("adaptive_gap_ms", "SENTRY_EXT_ADAPTIVE_GAP_MS", 10000, (1, 3600000), "adaptive: mean gap for background"),
    # bin/sentry-lambda-wrapper has the same default: keep the two in step
    ("state_file", "SENTRY_EXT_STATE_FILE", "/tmp/sentry-lambda-extension.state", None, "handshake record for the exec wrapper"),
    ("report_failures", "SENTRY_EXT_REPORT_FAILURES", "on", None, "failure kinds made into events (on/off/list)"),
    ("release", "SENTRY_RELEASE", None, None, "failure events' release when the SDK sent none"),
    ("environment", "SENTRY_ENVIRONMENT", None, None, "failure events' environment when the SDK sent none"),
    ("logs", "SENTRY_EXT_LOGS", "off", ("off", "on"), "forward the function's logs to Sentry Logs"),
    ("logs_level", "SENTRY_EXT_LOGS_LEVEL", "info", LOGS_LEVELS, "least level of forwarded function logs"),
    ("function_name", "AWS_LAMBDA_FUNCTION_NAME", "", None, "set by Lambda: the function's name"),
    ("function_version", "AWS_LAMBDA_FUNCTION_VERSION", "", None, "set by Lambda: the function's version"),
    ("region", "AWS_REGION", "", None, "set by Lambda: the function's region"),
    ("memory_mb", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 0, (0, 1048576), "set by Lambda: the memory size in MB"),
    ("metrics", "SENTRY_EXT_METRICS", "on", ("on", "off"), "Lambda's report figures as trace metrics"),
    ("unfinished_transactions", "SENTRY_EXT_UNFINISHED_TRANSACTIONS", "on", ("on", "off"),
     "a transaction for an invocation the SDK never finished"),
    ("architecture", "SENTRY_EXT_ARCHITECTURE", ARCHITECTURE, ARCHITECTURES, "the function's architecture (cost)"),
)
FAILURE_KINDS = ("timeout", "oom", "exit", "init")  # SENTRY_EXT_REPORT_FAILURES: "on", "off" or a list of these
# Fields the loader derives from several variables (documented in the README all the same).
DERIVED = (
    ("dsn", ("SENTRY_DSN", "SENTRY_EXT_UPSTREAM"), "the project's DSN, its origin optionally replaced"),
    ("proxy_url", ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"), "proxy for the DSN's scheme"),
)
_LENIENT = ("log_level", "memory_mb", "logs_level")  # a bad value falls back to the default instead of making the extension inert
_HIDDEN = ("dsn", "proxy_url")  # secrets stay out of repr


class ConfigError(ValueError):
    """A setting that cannot be used; the extension turns inert and logs it."""


class Config:
    """Every setting of the extension (see ``SETTINGS`` and the README's configuration table).

    Immutable, keyword-constructed from validated values; ``repr`` hides the DSN and the proxy
    URL. A plain class rather than a dataclass: no ``dataclasses`` before the first ``/event/next``.
    """

    dsn: Optional[Dsn]
    problem: Optional[str]  # why the extension is inert, or None
    proxy_url: Optional[str]
    runtime_api: str
    init_type: str
    host: str
    port: int
    max_body_bytes: int
    queue_max_items: int
    queue_max_bytes: int
    flush_mode: str
    flush_timeout_ms: int
    deadline_margin_ms: int
    senders: int  # the fewest sender threads (kept when idle)
    max_inflight: int  # the most: concurrent upstream requests while a backlog calls for them
    connect_timeout_ms: int
    read_timeout_ms: int
    max_attempts: int
    client_timeout_ms: int
    max_connections: int
    telemetry_host: str
    telemetry_port: int
    spool_dir: str
    spool_max_bytes: int
    spool_max_age_s: int
    log_level: str
    ca_file: Optional[str]
    no_proxy: str
    adaptive_window: int
    adaptive_gap_ms: int
    state_file: str
    warnings: Tuple[str, ...]  # lenient settings that fell back to their default (logged once)
    report_failures: str
    release: Optional[str]
    environment: Optional[str]
    logs: str
    logs_level: str
    function_name: str
    function_version: str
    region: str
    memory_mb: int
    metrics: str
    unfinished_transactions: str
    architecture: str

    def __init__(self, **values: Any) -> None:
        missing = [name for name in _REQUIRED if name not in values]
        unknown = [name for name in values if name not in _FIELDS]
        if missing or unknown:
            raise TypeError("Config() missing %s, unknown %s" % (missing, unknown))
        values.setdefault("proxy_url", None)
        warnings = values.setdefault("warnings", ())
        if not (isinstance(warnings, tuple) and all(isinstance(line, str) for line in warnings)):
            raise ConfigError("warnings must be a tuple of text, got %r" % (warnings,))
        if not (values["dsn"] is None or isinstance(values["dsn"], Dsn)):
            raise ConfigError("dsn must be a Dsn or None, got %r" % type(values["dsn"]).__name__)
        for name in ("problem", "proxy_url"):
            if not (values.get(name) is None or isinstance(values[name], str)):
                raise ConfigError("%s must be text or None, got %r" % (name, values[name]))
        for name, _, default, check, _ in SETTINGS:
            value = values.setdefault(name, default)
            if value is not default:
                _validate(name, value, default, check)
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

    @property
    def client_timeout_s(self) -> float:
        return self.client_timeout_ms / 1000.0

    @property
    def adaptive_gap_s(self) -> float:
        return self.adaptive_gap_ms / 1000.0

    @property
    def failure_kinds(self) -> Tuple[str, ...]:
        """The failure kinds reported as events (``SENTRY_EXT_REPORT_FAILURES``); empty: none."""
        return failure_kinds(self.report_failures)

    @property
    def telemetry_types(self) -> Tuple[str, ...]:
        """Telemetry API event types to subscribe to: ``platform`` always (failure events), ``function``
        too with SENTRY_EXT_LOGS=on; never ``extension`` (logging from the listener would loop)."""
        return ("platform", "function") if self.logs == "on" else ("platform",)

    def describe(self) -> str:
        """One log-safe line with the effective settings."""
        return "upstream=%s port=%d flush=%s senders=%d-%d queue=%d/%dB body_cap=%dB logs=%s" % (
            self.dsn.masked() if self.dsn else "-", self.port, self.flush_mode, min(self.senders, self.max_inflight),
            self.max_inflight, self.queue_max_items, self.queue_max_bytes, self.max_body_bytes,
            self.logs if self.logs == "off" else "%s(%s+)" % (self.logs, self.logs_level))


_FIELDS = tuple(Config.__annotations__)  # in declaration order
_ROWS = {row[0]: row for row in SETTINGS}
_REQUIRED = ("dsn", "problem")


def _validate(name: str, value: Any, default: Any, check: Any) -> None:
    if check is None:
        if not (isinstance(value, str) or (value is None and default is None)):
            raise ConfigError("%s must be text, got %r" % (name, value))
    elif isinstance(check[0], int):
        if type(value) is not int or not check[0] <= value <= check[1]:
            raise ConfigError("%s must be an integer between %d and %d, got %r" % (name, check[0], check[1], value))
    elif value not in check:
        raise ConfigError("%s must be one of %s, got %r" % (name, "/".join(check), value))


def failure_kinds(value: str) -> Tuple[str, ...]:
    """``on``/``off`` or a comma-separated list of FAILURE_KINDS as a tuple; ConfigError otherwise."""
    text = value.strip().lower()
    if text in ("on", "all"):
        return FAILURE_KINDS
    if text in ("off", "none"):
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAILURE_KINDS]
    if unknown or not kinds:
        raise ConfigError("SENTRY_EXT_REPORT_FAILURES must be on, off or a list of %s, got %r"
                          % ("/".join(FAILURE_KINDS), value[:60]))
    return tuple(k for k in FAILURE_KINDS if k in kinds)


def _raw(env: Mapping[str, str], names: Any) -> str:
    """The first non-empty value among ``names`` (one name or a tuple), stripped; "" if none."""
    for name in (names,) if isinstance(names, str) else names:
        value = env.get(name, "").strip()
        if value:
            return value
    return ""


def _setting(env: Mapping[str, str], field: str) -> Any:
    """The value of one ``SETTINGS`` row from ``env``; raises ConfigError for an unusable one."""
    _, names, default, check, _ = _ROWS[field]
    raw = _raw(env, names) if names else ""
    if not raw:
        return default
    label = names if isinstance(names, str) else names[0]
    if check is None:
        return raw
    if isinstance(check[0], int):
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError("%s must be an integer, got %r" % (label, raw)) from None
        if not check[0] <= value <= check[1]:
            raise ConfigError("%s must be between %d and %d, got %d" % (label, check[0], check[1], value))
        return value
    for choice in check:
        if choice.lower() == raw.lower():
            return choice
    raise ConfigError("%s must be one of %s, got %r" % (label, "/".join(check), raw.lower()))


def _lenient(env: Mapping[str, str], field: str, warnings: Optional[List[str]] = None) -> Any:
    """``_setting``, or the row's default for an unusable value (said in ``warnings`` if given)."""
    try:
        return _setting(env, field)
    except ConfigError as exc:
        default = _ROWS[field][2]
        if warnings is not None:
            warnings.append("%s; using %s" % (exc, default))
        return default


def load(env: Optional[Mapping[str, str]] = None) -> Config:
    """Build the Config from ``env`` (default ``os.environ``); never raises.

    A bad value makes the extension inert: ``problem`` says why, in one line.
    """
    env = os.environ if env is None else env
    try:
        return _load(env)
    except (ConfigError, DsnError) as exc:
        warnings: List[str] = []
        return Config(dsn=None, problem=str(exc), runtime_api=_lenient(env, "runtime_api"),
                      port=_lenient(env, "port"), state_file=_lenient(env, "state_file"),
                      log_level=_lenient(env, "log_level", warnings), warnings=tuple(warnings),
                      init_type=_lenient(env, "init_type"))


def _load(env: Mapping[str, str]) -> Config:
    raw_dsn = env.get("SENTRY_DSN", "").strip()
    if not raw_dsn:
        raise ConfigError("SENTRY_DSN is not set")
    dsn = Dsn.parse(raw_dsn)
    upstream = env.get("SENTRY_EXT_UPSTREAM", "").strip()
    if upstream:
        dsn = dsn.with_upstream(upstream)
    proxy_url = _raw(env, ("HTTPS_PROXY", "https_proxy") if dsn.scheme == "https" else ("HTTP_PROXY", "http_proxy"))
    warnings: List[str] = []
    values: Dict[str, Any] = {"dsn": dsn, "problem": None, "proxy_url": proxy_url or None}
    for field, names, _, _, _ in SETTINGS:
        if names:
            values[field] = _lenient(env, field, warnings) if field in _LENIENT else _setting(env, field)
    cfg = Config(warnings=tuple(warnings), **values)
    failure_kinds(cfg.report_failures)  # a list with an unknown kind: inert, like any bad value
    if cfg.telemetry_port in (cfg.port, 9001):
        raise ConfigError("SENTRY_EXT_TELEMETRY_PORT must differ from SENTRY_EXT_PORT and 9001 (reserved)")
    return cfg
