from __future__ import annotations

import pytest

from sentry_ext.protocol.dsn import Dsn, DsnError, parse_auth_header, query_auth


def test_parse_full_dsn() -> None:
    dsn = Dsn.parse("https://abc123:secret@o1.ingest.sentry.io:8443/prefix/path/42")
    assert (dsn.scheme, dsn.public_key, dsn.secret_key) == ("https", "abc123", "secret")
    assert (dsn.host, dsn.port, dsn.path, dsn.project_id) == ("o1.ingest.sentry.io", 8443, "/prefix/path", "42")
    assert dsn.api_url("/api/42/envelope/") == "https://o1.ingest.sentry.io:8443/prefix/path/api/42/envelope/"


def test_parse_plain_dsn_and_trailing_slash() -> None:
    dsn = Dsn.parse("http://key@127.0.0.1:5333/7/")
    assert dsn.origin == "http://127.0.0.1:5333"
    assert dsn.path == "" and dsn.project_id == "7"


def test_repr_hides_keys() -> None:
    dsn = Dsn.parse("https://verysecretkey:pw@host/1")
    assert "verysecretkey" not in repr(dsn) and "pw" not in repr(dsn)
    assert "verysecretkey" not in dsn.masked()


@pytest.mark.parametrize("text", [
    "", "   ", "ftp://k@h/1", "https://host/1", "https://k@/1", "https://k@host/", "https://k@host/abc",
    "https://k@host:notaport/1", "not a dsn",
])
def test_invalid_dsns(text: str) -> None:
    with pytest.raises(DsnError):
        Dsn.parse(text)


def test_with_upstream_keeps_keys() -> None:
    dsn = Dsn.parse("https://k@o1.ingest.sentry.io/42").with_upstream("http://127.0.0.1:9999/relay")
    assert dsn.api_url("/api/42/store/") == "http://127.0.0.1:9999/relay/api/42/store/"
    assert dsn.public_key == "k"
    with pytest.raises(DsnError):
        dsn.with_upstream("nothing")


def test_auth_header() -> None:
    parsed = parse_auth_header("Sentry sentry_key=abc, sentry_version=7, sentry_client=sentry.python/2.0")
    assert parsed == {"sentry_key": "abc", "sentry_version": "7", "sentry_client": "sentry.python/2.0"}
    assert parse_auth_header("sentry_key=abc")["sentry_key"] == "abc"
    with pytest.raises(DsnError):
        parse_auth_header("Sentry garbage")


def test_query_auth() -> None:
    assert query_auth("sentry_key=abc&sentry_version=7") == "abc"
    assert query_auth("foo=bar") is None
    assert query_auth("") is None
