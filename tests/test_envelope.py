from __future__ import annotations

import gzip
import json
import zlib

import pytest

from sentry_ext.protocol.envelope import Envelope, EnvelopeError, category, json_object, parse_header
from sentry_ext.protocol.body import HEADER_LINE_LIMIT, SHARED_DECODE_LIMIT, decode_body, first_line, header_and_body

SAMPLE = (b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","dsn":"https://e12d836b15bb49d7bbf99e64295d995b@sentry.io/42"}\n'
          b'{"type":"attachment","length":10,"content_type":"text/plain","filename":"hello.txt"}\n'
          b'\xef\xbb\xbfHello\r\n\n'
          b'{"type":"event","length":41,"content_type":"application/json","filename":"application.log"}\n'
          b'{"message":"hello world","level":"error"}\n')


def test_parse_documented_example() -> None:
    env = Envelope.parse(SAMPLE)
    assert env.headers["event_id"] == "9ec79c33ec9942ab8353589fcb2e04dc"
    assert [i.type for i in env.items] == ["attachment", "event"]
    assert env.items[0].payload == b"\xef\xbb\xbfHello\r\n"
    assert env.items[0].headers["filename"] == "hello.txt"
    assert env.items[1].data_category == "error"
    assert env.raw == SAMPLE


def test_items_without_length_and_no_trailing_newline() -> None:
    env = Envelope.parse(b'{}\n{"type":"session"}\n{"started":"2020"}\n{"type":"x","custom":1}\n{"a":1}')
    assert [(i.type, i.payload) for i in env.items] == [("session", b'{"started":"2020"}'), ("x", b'{"a":1}')]
    assert env.items[1].headers["custom"] == 1  # unknown keys preserved


def test_serialize_round_trip_adds_lengths() -> None:
    env = Envelope.parse(SAMPLE)
    again = Envelope.parse(env.serialize())
    assert again.headers == env.headers
    assert [(i.headers, i.payload) for i in again.items] == [(dict(i.headers, length=len(i.payload)), i.payload)
                                                            for i in env.items]


@pytest.mark.parametrize("data", [
    b"", b"not json\n", b"[1,2]\n", b'{}\n{"length":3}\nabc\n', b'{}\n{"type":"event","length":50}\nshort\n',
    b'{}\n{"type":"event","length":-1}\n\n', b'{}\n{"type":"event","length":"3"}\nabc\n',
    b'{}\n{"type":"event","length":3}\nabcX', b'{}\nnot json\n',
])
def test_malformed_envelopes_raise_typed_error(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.parse(data)


def test_first_line_identity_gzip_deflate() -> None:
    assert first_line(SAMPLE, "") == SAMPLE.split(b"\n", 1)[0]
    assert first_line(gzip.compress(SAMPLE), "gzip") == SAMPLE.split(b"\n", 1)[0]
    assert first_line(zlib.compress(SAMPLE), "deflate") == SAMPLE.split(b"\n", 1)[0]
    raw = zlib.compressobj(wbits=-15)
    assert first_line(raw.compress(SAMPLE) + raw.flush(), "deflate") == SAMPLE.split(b"\n", 1)[0]


def test_first_line_bounds_decompression() -> None:
    bomb = gzip.compress(b"{" + b" " * (50 * 1024 * 1024))
    with pytest.raises(EnvelopeError):
        first_line(bomb, "gzip")
    with pytest.raises(EnvelopeError):
        first_line(b"\x00" * (HEADER_LINE_LIMIT + 10), "")
    with pytest.raises(EnvelopeError):
        first_line(b"not gzip at all", "gzip")
    with pytest.raises(EnvelopeError):
        first_line(b"{}", "br")


def _raw_deflate(data: bytes) -> bytes:
    raw = zlib.compressobj(wbits=-15)
    return raw.compress(data) + raw.flush()


@pytest.mark.parametrize("body, encoding", [
    (SAMPLE, ""), (gzip.compress(SAMPLE), "gzip"), (gzip.compress(SAMPLE), "x-gzip"),
    (zlib.compress(SAMPLE), "deflate"), (_raw_deflate(SAMPLE), "deflate"),
    (gzip.compress(SAMPLE) + b"\x00" * 8, "gzip"),  # padding after the member
    (gzip.compress(SAMPLE) + gzip.compress(b"more\n"), "gzip"),  # two members: decoded elsewhere
    (zlib.compress(SAMPLE) + b"junk", "deflate"),
    (gzip.compress(SAMPLE)[:-12], "gzip"),  # truncated: the header line still reads
    (gzip.compress(SAMPLE[:100]), "gzip"),  # no newline at all
    (gzip.compress(b"{}\n" + bytes(range(256)) * 300), "gzip"),  # decodes past the shared limit
])
def test_header_and_body_agree_with_first_line_and_decode_body(body: bytes, encoding: str) -> None:
    line, decoded = header_and_body(body, encoding)
    assert line == first_line(body, encoding)
    if decoded is not None:
        assert decoded == decode_body(body, encoding, 1 << 20) and len(decoded) <= SHARED_DECODE_LIMIT


def test_header_and_body_shares_only_a_whole_small_single_stream() -> None:
    assert header_and_body(gzip.compress(SAMPLE), "gzip")[1] == SAMPLE
    assert header_and_body(_raw_deflate(SAMPLE), "deflate")[1] == SAMPLE
    assert header_and_body(SAMPLE, "")[1] is None  # identity: nothing to decode
    assert header_and_body(gzip.compress(SAMPLE) + gzip.compress(b"x"), "gzip")[1] is None
    assert header_and_body(gzip.compress(SAMPLE)[:-12], "gzip")[1] is None


def test_header_and_body_errors_as_first_line() -> None:
    for body, encoding in ((b"not gzip at all", "gzip"), (b"{}", "br"),
                           (gzip.compress(b"{" + b" " * (HEADER_LINE_LIMIT + 10)), "gzip")):
        with pytest.raises(EnvelopeError):
            first_line(body, encoding)
        with pytest.raises(EnvelopeError):
            header_and_body(body, encoding)


def test_parse_header() -> None:
    assert parse_header(b'{"event_id":"x"}') == {"event_id": "x"}
    for bad in (b"", b"  ", b"{", b'"str"', b"\xff\xfe"):
        with pytest.raises(EnvelopeError):
            parse_header(bad)


def test_categories() -> None:
    assert category("event") == "error"
    assert category("transaction") == "transaction"
    assert category("sessions") == "session"
    assert category("log") == "log_item"
    assert category("trace_metric") == "trace_metric"
    assert category("check_in") == "monitor"
    assert category("replay_recording") == "replay"
    assert category("something_new") == "default"


@pytest.mark.parametrize("line", [
    b'{"a":1}', b'  {"a": [1, 2]}  \n', b'{"a":1} x', b"", b"  ", b"[1]", b'{"a":', b'\xef\xbb\xbf{"a":1}',
    '{"é":1}'.encode("utf-16"), b'{"a":"\xff"}', b'{"a":"\\ud800"}', b'{"a":1}{', b'\x0b{"a":1}', b'1', b'"x"',
    b'{"a":1}\x00', b'{"a": NaN}', b"\t{}\r",
])
def test_json_object_parses_as_json_loads(line: bytes) -> None:
    # json_object goes to json's C scanner directly (util/json_text.py); it must accept exactly what
    # json.loads(bytes) accepts, with the same value.
    try:
        expected = json.loads(line)
    except ValueError:
        expected = ValueError
    try:
        got = json_object(line, "header")
    except EnvelopeError as exc:
        got = ValueError if "not valid JSON" in str(exc) or "empty" in str(exc) else TypeError
    if expected is not ValueError and not isinstance(expected, dict):
        expected = TypeError  # valid JSON, not an object
    assert repr(got) == repr(expected)
