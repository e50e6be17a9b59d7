"""DSN and authentication parsing (pure functions, no I/O).

Imported before the first ``/event/next``, so it stays light (start-up budget: main.py): no
``dataclasses``, ``typing`` or ``urllib.parse``; ``urllib.parse`` loads only for unusual DSNs.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Optional, Tuple

# What a plain DSN may contain for the fast path: printable ASCII but brackets (IPv6), "?" and "#".
_PLAIN = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset("[]?#")


class DsnError(ValueError):
    """Raised for a DSN or auth value that cannot be used."""


class Dsn(namedtuple("Dsn", "scheme public_key host port path project_id secret_key", defaults=(None,))):
    """A parsed Sentry DSN (immutable); ``repr`` hides the keys.

    ``path`` is the prefix before the project id, without a trailing slash ("" or "/prefix").
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "Dsn(scheme=%r, host=%r, port=%r, path=%r, project_id=%r)" % (
            self.scheme, self.host, self.port, self.path, self.project_id)

    @classmethod
    def parse(cls, text: str) -> "Dsn":
        """Parse ``scheme://key[:secret]@host[:port][/prefix]/project``; raises DsnError."""
        if not isinstance(text, str) or not text.strip():
            raise DsnError("empty DSN")
        try:
            scheme, username, password, hostname, port, path = _split(text.strip())
        except ValueError as exc:
            raise DsnError("unparsable DSN: %s" % exc) from None
        if scheme not in ("http", "https"):
            raise DsnError("DSN scheme must be http or https, not %r" % scheme)
        if not username:
            raise DsnError("DSN has no public key")
        if not hostname:
            raise DsnError("DSN has no host")
        prefix, _, project = path.rstrip("/").rpartition("/")
        if not project.isdigit():
            raise DsnError("DSN project id must be numeric, got %r" % project)
        return cls(
            scheme=scheme,
            public_key=username,
            host=hostname,
            port=port,
            path=prefix,
            project_id=project,
            secret_key=password or None,
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
        from urllib.parse import urlsplit

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
    from urllib.parse import parse_qsl

    for key, val in parse_qsl(query, keep_blank_values=True):
        if key == "sentry_key":
            return val
    return None


def _split(url: str) -> Tuple[str, Optional[str], Optional[str], Optional[str], Optional[int], str]:
    """(scheme, username, password, hostname, port, path) exactly as ``urllib.parse.urlsplit``
    gives them; raises ValueError as it does.

    Plain ``http(s)://`` DSNs of printable ASCII without brackets, query or fragment take a
    fast path that repeats urlsplit's steps for that case; anything else goes to urlsplit.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("http", "https") and _PLAIN.issuperset(url):
        netloc, slash, path = rest.partition("/")
        userinfo, at, hostinfo = netloc.rpartition("@")
        username = password = None  # type: Optional[str]
        if at:
            username, colon, password = userinfo.partition(":")
            if not colon:
                password = None
        hostname, _, port_text = hostinfo.partition(":")
        if not port_text or port_text.isdigit():
            port = int(port_text) if port_text else None
            if port is not None and port > 65535:
                raise ValueError("Port out of range 0-65535")
            if hostname:
                name, percent, zone = hostname.partition("%")
                hostname = name.lower() + percent + zone
            return scheme, username, password, hostname or None, port, slash + path
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme, parts.username, parts.password, parts.hostname, parts.port, parts.path
