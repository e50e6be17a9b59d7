"""Envelope bodies as they come over HTTP (identity, gzip or deflate): the header line decoded only
as far as needed, the whole body decoded under a cap, and items streamed a chunk at a time (counted,
skipped, or rebuilt without some) so that no decoded body is ever held whole."""

from __future__ import annotations

import threading
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .envelope import EnvelopeError, category, header_bytes, json_object, parse_header

HEADER_LINE_LIMIT = 64 * 1024  # bytes of decoded envelope header we are willing to inspect
# A compressed body up to a quarter of this is decoded whole at once when its header line is read,
# and what it decodes to (if it fits) is shared with the other readers of the same post.
SHARED_DECODE_LIMIT = 64 * 1024
INSPECTABLE_ENCODINGS = ("", "identity", "gzip", "x-gzip", "deflate")  # what the stdlib can decode

# Scanning an envelope's items (``scan_items``: counting a dropped request, rate limits at ingest)
# holds one decoded chunk and one item header line at a time, never the decoded body. The caps
# bound its CPU time, which is spent holding SCAN_LOCK: 16 MiB decoded inflates in tens of ms, and
# is 4x the default body cap (SDK JSON compresses about 4-10x); 1,000 items is far past what an SDK
# batches into one envelope (sentry-python puts 100 logs in one item); item headers are ~100 bytes.
SCAN_LIMIT = 16 * 1024 * 1024
SCAN_CHUNK = 64 * 1024
MAX_SCAN_ITEMS = 1000
ITEM_HEADER_LIMIT = 16 * 1024
# One scan at a time, process-wide: concurrent connections must not multiply its memory. A caller
# that cannot have it within SCAN_WAIT_S does something cheaper instead of queueing up.
SCAN_LOCK = threading.Lock()
SCAN_WAIT_S = 0.05

# A sink receives a payload piece by piece; ``on_item`` picks one (or None: skip) per item header.
Sink = Callable[[bytes], None]
OnItem = Callable[[Dict[str, Any], bytes], Optional[Sink]]

class ScanLimit(EnvelopeError):
    """Raised when an envelope goes on past what a scan may look at (decoded bytes or items)."""

def first_line(body: bytes, encoding: str) -> bytes:
    """The envelope header line of a body, decoding gzip/deflate only as far as needed.

    Raises EnvelopeError for an undecodable body or a header line over HEADER_LINE_LIMIT.
    """
    if encoding in ("", "identity"):
        return _header_line(body)
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _header_line(_inflate_prefix(body, encoding))
    raise EnvelopeError("cannot inspect a %r body" % encoding)


def _header_line(decoded: bytes) -> bytes:
    """The envelope header line at the start of ``decoded``; EnvelopeError past HEADER_LINE_LIMIT."""
    end = decoded.find(b"\n", 0, HEADER_LINE_LIMIT + 1)
    if end < 0:
        if len(decoded) > HEADER_LINE_LIMIT:
            raise EnvelopeError("envelope header line longer than %d bytes" % HEADER_LINE_LIMIT)
        return decoded
    return decoded[:end]


def header_and_body(body: bytes, encoding: str) -> Tuple[bytes, Optional[bytes]]:
    """``first_line(body, encoding)`` and, for a compressed body that decodes to at most
    SHARED_DECODE_LIMIT bytes, the decoded body (as ``decode_body`` gives it; else None): the
    readers of one SDK post inflate it once between them, not once each. Raises as ``first_line``."""
    if encoding not in ("gzip", "x-gzip", "deflate") or len(body) > SHARED_DECODE_LIMIT // 4:
        return first_line(body, encoding), None
    wbits = zlib_wbits(body, encoding)
    decomp = zlib.decompressobj(wbits)
    try:
        out = decomp.decompress(body, SHARED_DECODE_LIMIT + 1)  # the first stream's start, as _inflate_prefix's
    except zlib.error:
        return first_line(body, encoding), None  # maybe corrupt past the header line only: as before
    line = _header_line(out)
    # decode_body's conditions for a whole body in one stream (gzip: nothing but padding after it)
    whole = (decomp.eof and not decomp.unconsumed_tail and len(out) <= SHARED_DECODE_LIMIT
             and (wbits != 31 or not decomp.unused_data.strip(b"\x00")))
    return line, out if whole else None


def zlib_wbits(body: bytes, encoding: str) -> int:
    """zlib's ``wbits`` for a body in ``encoding``: gzip, zlib-wrapped or raw deflate."""
    if encoding != "deflate":
        return 31
    # RFC 9110 says zlib-wrapped; some clients send raw deflate. A zlib header is CM=8 and a
    # 16-bit check value divisible by 31.
    wrapped = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
    return 15 if wrapped else -15


def _inflate_prefix(body: bytes, encoding: str) -> bytes:
    wbits = zlib_wbits(body, encoding)
    decomp = zlib.decompressobj(wbits)
    out = b""
    pos = 0
    try:
        while pos < len(body) and len(out) <= HEADER_LINE_LIMIT and b"\n" not in out:
            out += decomp.decompress(body[pos:pos + 4096], HEADER_LINE_LIMIT + 1 - len(out))
            pos += 4096
            while decomp.unconsumed_tail and len(out) <= HEADER_LINE_LIMIT and b"\n" not in out:
                out += decomp.decompress(decomp.unconsumed_tail, HEADER_LINE_LIMIT + 1 - len(out))
    except zlib.error as exc:
        raise EnvelopeError("body is not valid %s: %s" % (encoding, exc)) from None
    return out


def decode_body(body: bytes, encoding: str, limit: int) -> bytes:
    """The whole decoded body (identity, gzip incl. several members, deflate), at most ``limit`` bytes.

    Raises EnvelopeError for another encoding, a corrupt or truncated stream, or more than ``limit``.
    """
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise EnvelopeError("body larger than %d bytes" % limit)
        return body
    if encoding not in INSPECTABLE_ENCODINGS:
        raise EnvelopeError("cannot inspect a %r body" % encoding)
    wbits = zlib_wbits(body, encoding)
    out: List[bytes] = []
    total = 0
    rest = body
    try:
        for _ in range(1000):  # gzip members; one in practice
            decomp = zlib.decompressobj(wbits)
            chunk = decomp.decompress(rest, limit - total + 1)
            total += len(chunk)
            if total > limit or decomp.unconsumed_tail:
                raise EnvelopeError("body decodes to more than %d bytes" % limit)
            out.append(chunk)
            if not decomp.eof:
                raise EnvelopeError("truncated %s stream" % encoding)
            rest = decomp.unused_data
            if wbits != 31 or not rest.strip(b"\x00"):
                return b"".join(out)
    except zlib.error as exc:
        raise EnvelopeError("body is not valid %s: %s" % (encoding, exc)) from None
    raise EnvelopeError("too many gzip members")


def decoded_chunks(body: bytes, encoding: str, chunk: int = SCAN_CHUNK) -> Iterator[bytes]:
    """The decoded body (as ``decode_body`` reads it) in pieces of at most ``chunk`` bytes; the
    input is fed in pieces too, so nothing body-sized is ever allocated. Raises EnvelopeError."""
    view = memoryview(body)
    if encoding in ("", "identity"):
        for pos in range(0, len(body), chunk):
            yield bytes(view[pos:pos + chunk])
        return
    if encoding not in INSPECTABLE_ENCODINGS:
        raise EnvelopeError("cannot inspect a %r body" % encoding)
    wbits = zlib_wbits(body, encoding)
    pos, size = 0, len(body)
    pending = b""  # input left over after the previous gzip member
    try:
        for _ in range(1000):  # gzip members; one in practice
            decomp = zlib.decompressobj(wbits)
            for _ in range(2 * size + 4 * SCAN_LIMIT // chunk + 4):  # each turn consumes input or yields output
                if decomp.eof:
                    break
                if decomp.unconsumed_tail:
                    data = decomp.unconsumed_tail
                elif pending:
                    data, pending = pending, b""
                elif pos < size:
                    data, pos = view[pos:pos + chunk], pos + chunk
                else:
                    raise EnvelopeError("truncated %s stream" % encoding)
                out = decomp.decompress(data, chunk)
                if out:
                    yield out
            if not decomp.eof:
                raise EnvelopeError("%s stream does not end" % encoding)
            pending = decomp.unused_data
            if wbits != 31 or (not pending.strip(b"\x00") and body.count(b"\x00", pos) == max(size - pos, 0)):
                return
    except zlib.error as exc:
        raise EnvelopeError("body is not valid %s: %s" % (encoding, exc)) from None
    raise EnvelopeError("too many gzip members")


class _Reader:
    """Decoded bytes read forward: lines of bounded length, and payloads passed on or skipped."""

    def __init__(self, chunks: Iterator[bytes], limit: int) -> None:
        self._chunks = chunks
        self._limit = limit
        self._buf = b""
        self._pos = 0
        self.scanned = 0

    def _fill(self) -> bool:
        """Append the next decoded chunk; False at the end. ScanLimit past ``limit`` bytes."""
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self.scanned += len(chunk)
        if self.scanned > self._limit:
            raise ScanLimit("envelope decodes to more than %d bytes" % self._limit)
        self._buf = self._buf[self._pos:] + chunk
        self._pos = 0
        return True

    def readline(self, max_len: int) -> Optional[bytes]:
        """The next line without its newline (the rest, at the end); None when nothing is left."""
        searched = 0  # bytes past _pos known to hold no newline
        for _ in range(self._limit + 2):  # each turn returns, or adds a (non-empty) chunk
            nl = self._buf.find(b"\n", self._pos + searched)
            if nl >= 0 and nl - self._pos <= max_len:
                line = self._buf[self._pos:nl]
                self._pos = nl + 1
                return line
            if nl >= 0 or len(self._buf) - self._pos > max_len:
                break
            searched = len(self._buf) - self._pos
            if not self._fill():
                if not searched:
                    return None
                line, self._buf, self._pos = self._buf[self._pos:], b"", 0
                return line
        raise EnvelopeError("line longer than %d bytes" % max_len)

    def copy(self, n: int, sink: Optional[Sink]) -> None:
        """Pass the next ``n`` bytes to ``sink`` (None: skip them)."""
        for _ in range(2 * self._limit + 2):  # each turn consumes bytes or adds a (non-empty) chunk
            if n <= 0:
                return
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._fill():
                    raise EnvelopeError("item payload truncated (%d bytes missing)" % n)
                continue
            take = min(avail, n)
            if sink is not None:
                sink(self._buf[self._pos:self._pos + take])
            self._pos += take
            n -= take
        raise ScanLimit("envelope decodes to more than %d bytes" % self._limit)

    def to_newline(self, sink: Optional[Sink]) -> int:
        """Pass the bytes up to the next newline (or the end) to ``sink``, eat the newline; their count."""
        count = 0
        for _ in range(self._limit + 2):  # each turn returns, or adds a (non-empty) chunk
            nl = self._buf.find(b"\n", self._pos)
            end = len(self._buf) if nl < 0 else nl
            if sink is not None and end > self._pos:
                sink(self._buf[self._pos:end])
            count += end - self._pos
            self._pos = end
            if nl >= 0:
                self._pos += 1
                return count
            if not self._fill():
                return count
        raise ScanLimit("envelope decodes to more than %d bytes" % self._limit)

    def end_payload(self) -> None:
        """After a payload of explicit length: a newline, or the end of the envelope."""
        if self._pos == len(self._buf) and not self._fill():
            return
        if self._buf[self._pos:self._pos + 1] != b"\n":
            raise EnvelopeError("item payload not followed by a newline")
        self._pos += 1


class ScannedItem:
    """An item seen by ``scan_items``: its header, the header's line and its payload's length."""

    __slots__ = ("headers", "line", "length")

    def __init__(self, headers: Dict[str, Any], line: bytes, length: int) -> None:
        self.headers = headers
        self.line = line
        self.length = length

    @property
    def data_category(self) -> str:
        return category(str(self.headers.get("type", "")))


def scan_items(body: bytes, encoding: str, limit: int = SCAN_LIMIT, on_item: Optional[OnItem] = None,
               chunk: int = SCAN_CHUNK, on_header: Optional[Sink] = None) -> Iterator[ScannedItem]:
    """The items of an envelope body as ``Envelope.parse`` finds them, streamed: decoded a chunk at
    a time, payloads skipped or passed to the sink ``on_item(headers, line)`` returns. Raises
    EnvelopeError as ``parse`` does, and ScanLimit past ``limit`` decoded bytes or MAX_SCAN_ITEMS."""
    reader = _Reader(decoded_chunks(body, encoding, chunk), limit)
    header_line = reader.readline(HEADER_LINE_LIMIT) or b""
    parse_header(header_line)
    if on_header is not None:
        on_header(header_line)
    items = 0
    for _ in range(limit + 1):  # each turn eats at least a newline
        line = reader.readline(ITEM_HEADER_LIMIT)
        if line is None:
            return
        if not line.strip():
            continue  # blank lines between items are tolerated
        headers = json_object(line, "item header")
        if "type" not in headers or not isinstance(headers["type"], str):
            raise EnvelopeError("item header without a string type")
        items += 1
        if items > MAX_SCAN_ITEMS:
            raise ScanLimit("more than %d items" % MAX_SCAN_ITEMS)
        sink = on_item(headers, line) if on_item is not None else None
        length = headers.get("length")
        if length is not None:
            if isinstance(length, bool) or not isinstance(length, int) or length < 0:
                raise EnvelopeError("item length must be a non-negative integer")
            reader.copy(length, sink)
            reader.end_payload()
        else:
            length = reader.to_newline(sink)
        yield ScannedItem(headers, line, length)


def without_items(body: bytes, encoding: str, keep: Sequence[bool], lengths: Sequence[int],
                  limit: int = SCAN_LIMIT) -> bytes:
    """``body`` with only the items ``keep`` marks, encoded as it was, built while streaming: the
    envelope header line as it was, and each kept item as ``Envelope.serialize`` writes it (its
    header line verbatim when its ``length`` is right). ``lengths``: the payload lengths a first
    ``scan_items`` found. Raises EnvelopeError if the body no longer scans the same way."""
    parts: List[bytes] = []
    comp = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        comp = zlib.compressobj(6, zlib.DEFLATED, 31 if encoding != "deflate" else zlib_wbits(body, encoding))

    def write(data: bytes) -> None:
        out = comp.compress(data) if comp is not None else data
        if out:
            parts.append(out)

    index = -1

    def on_item(headers: Dict[str, Any], line: bytes) -> Optional[Sink]:
        nonlocal index
        index += 1
        if index >= len(keep) or not keep[index]:
            return None
        length = headers.get("length")
        if isinstance(length, bool) or length != lengths[index]:
            headers, line = dict(headers, length=lengths[index]), None
        write(header_bytes(headers, line) + b"\n")
        return write

    for seen, item in enumerate(scan_items(body, encoding, limit, on_item, on_header=lambda h: write(h + b"\n"))):
        if seen >= len(keep) or item.length != lengths[seen]:
            raise EnvelopeError("envelope changed between scans")
        if keep[seen]:
            write(b"\n")
    if comp is not None:
        parts.append(comp.flush())
    return b"".join(parts)


def encode_body(data: bytes, encoding: str, like: bytes) -> bytes:
    """``data`` encoded the way ``like`` (the original body) was: gzip, zlib or raw deflate, identity."""
    if encoding in ("gzip", "x-gzip"):
        import gzip  # only when an envelope must be changed: not worth its ~100 KiB at start

        return gzip.compress(data, compresslevel=6, mtime=0)
    if encoding == "deflate":
        wbits = zlib_wbits(like, encoding)
        comp = zlib.compressobj(6, zlib.DEFLATED, wbits)
        return comp.compress(data) + comp.flush()
    return data
