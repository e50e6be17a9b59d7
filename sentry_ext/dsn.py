"""DSN and authentication parsing (pure functions, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional
from urllib.parse import parse_qsl, urlsplit


class DsnError(ValueError):
    """Raised for a DSN or auth value that cannot be used."""


@dataclass(frozen=True)
class Dsn:
    """A parsed Sentry DSN; ``repr`` hides the keys."""

    scheme: str
    public_key: str = field(repr=False)
    host: str
    port: Optional[int]
    path: str  # prefix before the project id, without a trailing slash ("" or "/prefix")
    project_id: str
    secret_key: Optional[str] = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> "Dsn":
        """Parse ``scheme://key[:secret]@host[:port][/prefix]/project``; raises DsnError."""
        if not isinstance(text, str) or not text.strip():
            raise DsnError("empty DSN")
        try:
            parts = urlsplit(text.strip())
            port = parts.port
        except ValueError as exc:
            raise DsnError("unparsable DSN: %s" % exc) from None
        if parts.scheme not in ("http", "https"):
            raise DsnError("DSN scheme must be http or https, not %r" % parts.scheme)
        if not parts.username:
            raise DsnError("DSN has no public key")
        if not parts.hostname:
            raise DsnError("DSN has no host")
        prefix, _, project = parts.path.rstrip("/").rpartition("/")
        if not project.isdigit():
            raise DsnError("DSN project id must be numeric, got %r" % project)
        return cls(
            scheme=parts.scheme,
            public_key=parts.username,
            host=parts.hostname,
            port=port,
            path=prefix,
            project_id=project,
            secret_key=parts.password or None,
        )

    @property
    def netloc(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return host if self.port is None else "%s:%d" % (host, self.port)

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` of the upstream."""
        return "%s://%s" % (self.scheme, self.netloc)

    def api_url(self, api_path: str) -> str:
        """Upstream URL for a request path that starts with ``/api/``."""
        return "%s%s%s" % (self.origin, self.path, api_path)

    def with_upstream(self, upstream: str) -> "Dsn":
        """The same keys and project, sent to another ``scheme://host[:port][/prefix]``."""
        try:
            parts = urlsplit(upstream.strip())
            port = parts.port
        except ValueError as exc:
            raise DsnError("unparsable upstream %r: %s" % (upstream, exc)) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DsnError("upstream must look like https://host[:port][/prefix], got %r" % upstream)
        return Dsn(parts.scheme, self.public_key, parts.hostname, port, parts.path.rstrip("/"),
                   self.project_id, self.secret_key)

    def masked(self) -> str:
        """The DSN with its key shortened, safe for logs."""
        return "%s://%s…@%s%s/%s" % (self.scheme, self.public_key[:4], self.netloc, self.path, self.project_id)


def parse_auth_header(value: str) -> Dict[str, str]:
    """Parse ``Sentry sentry_key=..., sentry_version=7`` into a dict; raises DsnError."""
    text = value.strip()
    if text[:7].lower() == "sentry ":
        text = text[7:]
    result: Dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, val = part.partition("=")
        if not sep:
            raise DsnError("malformed X-Sentry-Auth element %r" % part[:40])
        result[key.strip().lower()] = val.strip()
    return result


def query_auth(query: str) -> Optional[str]:
    """The ``sentry_key`` of a query string, or None."""
    if "sentry_key" not in query:
        return None
    for key, val in parse_qsl(query, keep_blank_values=True):
        if key == "sentry_key":
            return val
    return None
