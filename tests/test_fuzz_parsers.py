"""Property-based fuzzing of every parser that sees untrusted input: envelopes (and their
compressed bodies), DSNs, X-Sentry-Auth, query auth, rate-limit headers, Retry-After and spool
files. Arbitrary input may only raise the module's typed error; valid input round-trips."""

from __future__ import annotations

import email.utils
import gzip
import json
import zlib

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sentry_ext.protocol import envelope as envmod
from sentry_ext.protocol import body as bodymod
from sentry_ext.protocol import rate_limits as ratelimit
from sentry_ext.protocol.dsn import Dsn, DsnError, parse_auth_header, query_auth
from sentry_ext.protocol.envelope import Envelope, EnvelopeError, Item, parse_header
from sentry_ext.protocol.body import first_line
from sentry_ext.delivery.spool import MAGIC, SpoolError, decode

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DEEP = b"[" * 100_000  # overflows a recursive JSON decoder
NOW = 1_700_000_000.0

# -- strategies ----------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 63), 2 ** 63),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)

# Lines that look like envelope parts, so random envelopes get past the first check.
fragments = st.one_of(
    st.sampled_from([b"", b"{}", b'{"event_id":"' + b"a" * 32 + b'"}', b'{"type":"event"}',
                     b'{"type":"event","length":3}', b'{"type":"attachment","length":0}',
                     b'{"type":"x","length":-1}', b'{"type":"x","length":1e9}', b'{"type":1}',
                     b'{"type":"x","length":true}', b"[]", b"null", b"\r", b"\xff\xfe", b"abc", DEEP[:5000]]),
    st.binary(max_size=40),
    json_objects.map(lambda o: json.dumps(o).encode()),
)
envelope_like = st.lists(fragments, max_size=8).map(b"\n".join)


def gzip_of(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# -- envelopes -----------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=300), envelope_like))
@example(DEEP)
@example(b'{}\n{"type":"event","length":5}\nabc')
@example(b'{}\n' + DEEP)
def test_envelope_parse_raises_only_envelope_error(data: bytes) -> None:
    try:
        env = Envelope.parse(data)
    except EnvelopeError:
        return
    # Whatever parses re-serializes to something that parses to the same items.
    again = Envelope.parse(env.serialize())
    assert again.headers == env.headers
    assert [i.payload for i in again.items] == [i.payload for i in env.items]
    strip = lambda h: {k: v for k, v in h.items() if k != "length"}  # noqa: E731
    assert [strip(i.headers) for i in again.items] == [strip(i.headers) for i in env.items]


@FUZZ
@given(st.one_of(st.binary(max_size=300), envelope_like), st.sampled_from(["", "gzip", "deflate"]),
       st.integers(1, 40), st.lists(st.booleans(), max_size=8))
@example(b'{}\n{"type":"event","length":5}\nabc', "", 1, [])
@example(b'{}\n{"type":"a","length":2}\nab\n\n{"type":"b"}\nxyz', "gzip", 3, [False, True])
def test_streaming_scan_finds_what_parse_finds(data: bytes, encoding: str, chunk: int, keep: list) -> None:
    # Decoded in tiny chunks, so lines and payloads straddle chunk ends.
    body = {"": data, "gzip": gzip_of(data), "deflate": zlib.compress(data)}[encoding]
    try:
        env = Envelope.parse(data)
    except EnvelopeError:
        env = None
    try:
        scanned = list(bodymod.scan_items(body, encoding, 1 << 20, chunk=chunk))
    except bodymod.ScanLimit:
        raise
    except EnvelopeError:
        assert env is None or len(env.header_line) > bodymod.HEADER_LINE_LIMIT or any(
            len(i.header_line) > bodymod.ITEM_HEADER_LIMIT for i in env.items)
        return
    assert env is not None
    assert [(i.headers, i.line, i.length) for i in scanned] == [(i.headers, i.header_line, len(i.payload))
                                                                for i in env.items]
    keep = (keep + [True] * len(scanned))[:len(scanned)]
    rebuilt = bodymod.without_items(body, encoding, keep, [i.length for i in scanned])
    expected = Envelope(env.headers, [i for i, k in zip(env.items, keep) if k], header_line=env.header_line)
    assert bodymod.decode_body(rebuilt, encoding, 1 << 20) == expected.serialize()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_objects, st.lists(st.tuples(st.text(min_size=1, max_size=12), json_objects,
                                        st.binary(max_size=200)), max_size=5))
def test_valid_envelopes_round_trip(header: dict, items: list) -> None:
    env = Envelope(header, [Item(dict(extra, type=kind), payload) for kind, extra, payload in items])
    data = env.serialize()
    parsed = Envelope.parse(data)
    assert parsed.headers == header
    assert [i.type for i in parsed.items] == [kind for kind, _, _ in items]
    assert [i.payload for i in parsed.items] == [payload for _, _, payload in items]
    for item, (kind, extra, payload) in zip(parsed.items, items):
        assert item.headers["length"] == len(payload)
        assert {k: v for k, v in item.headers.items() if k not in ("type", "length")} == \
            {k: v for k, v in extra.items() if k not in ("type", "length")}
    assert parse_header(first_line(data, "")) == header
    assert parse_header(first_line(gzip_of(data), "gzip")) == header
    assert parse_header(first_line(zlib.compress(data), "deflate")) == header


ENCODINGS = st.sampled_from(["", "identity", "gzip", "x-gzip", "deflate", "br", "zstd", "compress", "GZIP", "\x00"])


@FUZZ
@given(st.one_of(st.binary(max_size=300), envelope_like, envelope_like.map(gzip_of),
                 envelope_like.map(zlib.compress), st.binary(max_size=300).map(lambda b: gzip_of(b)[:-5])),
       ENCODINGS)
@example(DEEP, "")
@example(gzip_of(DEEP), "gzip")
@example(b"\x1f\x8b\x08\x00" + b"\x00" * 20, "gzip")
def test_header_inspection_raises_only_envelope_error(body: bytes, encoding: str) -> None:
    try:
        line = first_line(body, encoding)
    except EnvelopeError:
        return
    assert len(line) <= bodymod.HEADER_LINE_LIMIT
    try:
        assert isinstance(parse_header(line), dict)
    except EnvelopeError:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=300), envelope_like.map(gzip_of), envelope_like.map(zlib.compress),
                 st.binary(max_size=300).map(lambda b: gzip_of(b) + gzip_of(b))),
       ENCODINGS, st.integers(0, 2000))
def test_body_decoding_raises_only_envelope_error_and_respects_its_limit(body: bytes, encoding: str,
                                                                          limit: int) -> None:
    try:
        out = bodymod.decode_body(body, encoding, limit)
    except EnvelopeError:
        return
    assert len(out) <= limit


def test_gzip_bomb_is_inspected_in_bounded_memory_and_time() -> None:
    import time

    bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB from ~64 KiB
    assert len(bomb) < 200 * 1024
    t0 = time.monotonic()
    with pytest.raises(EnvelopeError):
        first_line(bomb, "gzip")  # stops at HEADER_LINE_LIMIT, never inflates the rest
    with pytest.raises(EnvelopeError):
        bodymod.decode_body(bomb, "gzip", 4 * 1024 * 1024)
    assert time.monotonic() - t0 < 2.0


# -- DSN and auth --------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.text(max_size=80), st.from_regex(r"\A(https?|ftp)://[^\s]{0,40}\Z"),
                 st.builds(lambda a, b, c: "https://%s@%s/%s" % (a, b, c), st.text(max_size=10),
                           st.text(max_size=15), st.text(max_size=5))))
@example("http://k@[::1/1")
@example("http://k@h:99999/1")
@example("http://k@h:-1/1")
@example("https://k@h/\x00")
def test_dsn_parse_raises_only_dsn_error(text: str) -> None:
    try:
        dsn = Dsn.parse(text)
    except DsnError:
        return
    assert dsn.scheme in ("http", "https") and dsn.public_key and dsn.host and dsn.project_id.isdigit()
    assert dsn.api_url("/api/%s/envelope/" % dsn.project_id).startswith(dsn.scheme + "://")
    try:
        dsn.with_upstream(text)
    except DsnError:
        pass


@FEW
@given(st.none() | st.integers() | st.binary(max_size=5) | st.lists(st.text(max_size=3), max_size=2))
def test_dsn_parse_of_a_non_string_is_a_dsn_error(value: object) -> None:
    with pytest.raises(DsnError):
        Dsn.parse(value)  # type: ignore[arg-type]


hosts = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}\Z")


@FEW
@given(st.sampled_from(["http", "https"]), st.from_regex(r"\A[0-9a-f]{32}\Z"),
       st.one_of(st.none(), st.from_regex(r"\A[0-9a-zA-Z]{1,20}\Z")), hosts,
       st.one_of(st.none(), st.integers(1, 65535)), st.lists(st.from_regex(r"\A[a-z0-9_-]{1,8}\Z"), max_size=3),
       st.from_regex(r"\A[1-9][0-9]{0,9}\Z"))
def test_valid_dsns_round_trip(scheme: str, key: str, secret, host: str, port, prefix: list, project: str) -> None:
    netloc = host if port is None else "%s:%d" % (host, port)
    userinfo = key if secret is None else "%s:%s" % (key, secret)
    path = "".join("/" + p for p in prefix)
    dsn = Dsn.parse("%s://%s@%s%s/%s" % (scheme, userinfo, netloc, path, project))
    assert (dsn.scheme, dsn.public_key, dsn.host, dsn.port, dsn.path, dsn.project_id, dsn.secret_key) == \
        (scheme, key, host, port, path, project, secret)
    assert dsn.api_url("/api/%s/envelope/" % project) == "%s://%s%s/api/%s/envelope/" % (scheme, netloc, path, project)
    assert key not in repr(dsn)
    assert Dsn.parse("%s://%s@%s%s/%s" % (scheme, key, dsn.netloc, dsn.path, dsn.project_id)).public_key == key


@FUZZ
@given(st.text(max_size=120))
@example("Sentry ")
@example("Sentry sentry_key")
@example("=,=,=")
def test_auth_header_raises_only_dsn_error(value: str) -> None:
    try:
        parsed = parse_auth_header(value)
    except DsnError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())


auth_values = st.from_regex(r"\A[^,\s=]([^,]{0,20}[^,\s])?\Z").filter(lambda v: v == v.strip())


@FUZZ
@given(st.dictionaries(st.from_regex(r"\A[a-z_]{1,15}\Z"), auth_values, min_size=1, max_size=5),
       st.sampled_from(["Sentry ", "sentry ", "SENTRY ", ""]), st.sampled_from([", ", ",", " , "]))
def test_valid_auth_headers_round_trip(pairs: dict, prefix: str, sep: str) -> None:
    value = prefix + sep.join("%s=%s" % kv for kv in pairs.items())
    assert parse_auth_header(value) == pairs


@FUZZ
@given(st.text(max_size=120))
def test_query_auth_never_raises(query: str) -> None:
    key = query_auth(query)
    assert key is None or isinstance(key, str)


@FEW
@given(st.from_regex(r"\A[0-9a-f]{1,32}\Z"), st.lists(st.tuples(st.from_regex(r"\A[a-z]{1,8}\Z"),
                                                                 st.from_regex(r"\A[a-z0-9]{0,8}\Z")), max_size=3))
def test_query_auth_finds_the_key(key: str, others: list) -> None:
    from urllib.parse import urlencode

    query = urlencode([(k, v) for k, v in others if k != "sentry_key"] + [("sentry_key", key)])
    assert query_auth(query) == key


# -- rate limits (sentry_ext/protocol/rate_limits.py) -------------------------------------------------


rl_fields = st.one_of(st.sampled_from(["60", "1.5", "-1", "nan", "inf", "1e999", "", "x", "0", "99999999999"]),
                      st.text(max_size=6))
rl_categories = st.lists(st.one_of(st.sampled_from(sorted(envmod.CATEGORIES.values()) + ["", "unknown"]),
                                   st.text(max_size=5)), max_size=3).map(";".join)
rl_entries = st.tuples(rl_fields, rl_categories, st.text(max_size=8), st.text(max_size=8)).map(":".join)
rl_headers = st.one_of(st.text(max_size=80), st.lists(rl_entries, max_size=4).map(", ".join))


@FUZZ
@given(rl_headers)
@example("60::organization, 1e999:error:key, nan::, -5:transaction")
@example(",,,:::;;;")
def test_rate_limit_header_never_raises_and_stays_bounded(header: str) -> None:
    limits = ratelimit.parse_rate_limits(header, NOW)
    assert isinstance(limits, dict)
    for category, until in limits.items():
        assert category is None or isinstance(category, str)
        assert NOW <= until <= NOW + ratelimit.MAX_LIMIT_S


known = sorted(getattr(envmod, "KNOWN_CATEGORIES", set(envmod.CATEGORIES.values())))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 100000), st.lists(st.sampled_from(known), max_size=3, unique=True)),
                min_size=1, max_size=5))
def test_valid_rate_limits_keep_the_longest_per_category(entries: list) -> None:
    header = ", ".join("%d:%s:key:reason" % (secs, ";".join(cats)) for secs, cats in entries)
    limits = ratelimit.parse_rate_limits(header, NOW)
    expected: dict = {}
    for secs, cats in entries:
        for category in cats or [None]:
            expected[category] = max(expected.get(category, 0.0), NOW + secs)
    assert limits == expected


@FUZZ
@given(st.one_of(st.none(), st.text(max_size=40),
                 st.integers(-10 ** 12, 10 ** 12).map(str),
                 st.floats(allow_nan=True, allow_infinity=True).map(repr),
                 st.integers(-2 ** 40, 2 ** 40).map(lambda t: email.utils.formatdate(t, usegmt=True)
                                                    if -62135596800 < t < 253402300799 else str(t))))
@example("Wed, 21 Oct 2015 07:28:00 GMT")
@example("Wed, 21 Oct 99999 07:28:00 GMT")
@example("Mon, 01 Jan 0000 00:00:00 GMT")
@example("Tue, 31 Feb 2024 25:61:61 GMT")
@example("Thu, 01 Jan 1970 00:00:00 +9999")
def test_retry_after_never_raises_and_stays_bounded(value) -> None:
    until = ratelimit.parse_retry_after(value, NOW)
    assert until is None or NOW <= until <= NOW + ratelimit.MAX_LIMIT_S


@FEW
@given(st.integers(0, 86400), st.integers(0, 86400))
def test_valid_retry_after_forms(seconds: int, ahead: int) -> None:
    assert ratelimit.parse_retry_after(str(seconds), NOW) == NOW + seconds
    date = email.utils.formatdate(NOW + ahead, usegmt=True)
    assert ratelimit.parse_retry_after(date, NOW) == NOW + ahead


@FEW
@given(st.integers(100, 999), st.dictionaries(st.sampled_from(["X-Sentry-Rate-Limits", "x-sentry-rate-limits",
                                                                "Retry-After", "retry-after", "Other"]),
                                              rl_headers, max_size=3))
def test_rate_limit_store_never_raises_on_any_reply(status: int, headers: dict) -> None:
    store = ratelimit.RateLimits(clock=lambda: NOW)
    store.update("k", status, headers)
    value = store.header_value("k")
    assert isinstance(value, str)
    # what we mirror to the SDK parses back to limits that cover exactly the same categories
    mirrored, active = ratelimit.parse_rate_limits(value, NOW), store.active("k")
    for category in known + [None]:
        assert ratelimit.limited(mirrored, category, NOW) == ratelimit.limited(active, category, NOW), category


# -- spool files (/tmp survives resets: a corrupt file must not make the extension inert) ----

spool_meta = st.fixed_dictionaries({}, optional={
    "path": st.one_of(st.just("/api/42/envelope/"), st.text(max_size=8)),
    "headers": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2), json_values),
    "key": json_values, "received_at": st.one_of(st.floats(), st.text(max_size=4), st.none()),
    "attempts": st.one_of(st.integers(), st.text(max_size=3), st.floats(), st.none()),
    "event_id": json_values, "length": st.one_of(st.integers(-5, 50), st.floats(), st.text(max_size=3)),
})


def _spool_bytes(records: list) -> bytes:
    out = MAGIC
    for meta, body in records:
        out += json.dumps(meta).encode() + b"\n" + body + b"\n"
    return out


@FUZZ
@given(st.one_of(st.binary(max_size=200).map(lambda b: MAGIC + b),
                 st.lists(st.tuples(spool_meta, st.binary(max_size=20)), max_size=3).map(_spool_bytes)))
@example(MAGIC + b'{"length":Infinity,"headers":{},"path":"/api/1/","key":"k","received_at":1}\n\n')
@example(MAGIC + b'{"length":0,"headers":{},"path":"/api/1/","key":"k","received_at":1,"attempts":"x"}\n\n')
@example(MAGIC + DEEP + b"\n")
def test_spool_decode_raises_only_spool_error(data: bytes) -> None:
    try:
        requests = decode(data)
    except SpoolError:
        return
    assert all(r.upstream_path.startswith("/api/") for r in requests)


def test_a_corrupt_spool_file_is_deleted_not_fatal(tmp_path) -> None:
    from sentry_ext.delivery.spool import Spool

    bad = tmp_path / "spool-1-1.sle"
    bad.write_bytes(MAGIC + b'{"length":0,"headers":{},"path":"/api/1/","key":"k","received_at":1,"attempts":"x"}\n\n')
    loaded = Spool(str(tmp_path), 1 << 20, 3600, "k").load()
    assert loaded.corrupt_files == 1 and not loaded.requests and not bad.exists()


def test_json_nesting_bomb_in_an_envelope_is_a_typed_error() -> None:
    with pytest.raises(EnvelopeError):
        parse_header(DEEP)
    with pytest.raises(EnvelopeError):
        Envelope.parse(b"{}\n" + b'{"type":"event","x":' + DEEP + b"\n")
