"""A bounded on-disk spool under /tmp for what SHUTDOWN's deadline left unsent.

Lambda keeps /tmp across a reset of the same execution environment (after a timeout or crash),
so a spool written then is sent after that environment's next Init; after a spindown a new
environment starts with an empty /tmp and the spool is gone: it is the last resort. One file per SHUTDOWN: a magic line, then per request a JSON meta line,
the body, and a newline. Files are written under a temporary name and renamed, so a reader never
sees half a file; anything that does not parse is deleted, anything for another key is left alone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import List, Optional, Tuple

from ..util.records import Record
from .request import Request

log = logging.getLogger(__name__)

MAGIC = b"SENTRY-LAMBDA-EXT-SPOOL 1\n"
PREFIX = "spool-"
SUFFIX = ".sle"


class SpoolError(ValueError):
    """A spool file that does not follow the format."""


class LoadResult(Record):
    __slots__ = ("requests", "expired", "corrupt_files")

    def __init__(self, requests: Optional[List[Request]] = None, expired: Optional[List[Request]] = None,
                 corrupt_files: int = 0) -> None:
        self.requests: List[Request] = requests if requests is not None else []
        self.expired: List[Request] = expired if expired is not None else []
        self.corrupt_files = corrupt_files


def _encode(req: Request) -> bytes:
    meta = {"path": req.upstream_path, "headers": req.headers, "key": req.public_key,
            "received_at": req.received_at, "attempts": req.attempts, "event_id": req.event_id,
            "length": len(req.body)}
    return json.dumps(meta, separators=(",", ":")).encode("utf-8") + b"\n" + req.body + b"\n"


def decode(data: bytes) -> List[Request]:
    """Parse a whole spool file; raises SpoolError on anything unexpected."""
    if not data.startswith(MAGIC):
        raise SpoolError("bad magic")
    pos = len(MAGIC)
    out: List[Request] = []
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise SpoolError("truncated meta line")
        try:
            meta = json.loads(data[pos:nl])
            length = int(meta["length"])
            headers = {str(k): str(v) for k, v in dict(meta["headers"]).items()}
            path, key = str(meta["path"]), str(meta["key"])
            received_at = float(meta["received_at"])
            attempts = int(meta.get("attempts") or 0)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
            raise SpoolError("bad meta line") from None
        if length < 0 or not path.startswith("/api/"):
            raise SpoolError("bad record")
        start = nl + 1
        end = start + length
        if data[end:end + 1] != b"\n":
            raise SpoolError("truncated body")
        event_id = meta.get("event_id")
        out.append(Request(upstream_path=path, headers=headers, body=data[start:end], public_key=key,
                           received_at=received_at, attempts=attempts,
                           event_id=event_id if isinstance(event_id, str) else None))
        pos = end + 1
    return out


class Spool:
    """Writes leftovers at SHUTDOWN and loads them after the next Init."""

    def __init__(self, directory: str, max_bytes: int, max_age_s: float, public_key: str) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.public_key = public_key

    def _files(self) -> List[str]:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return sorted(n for n in names if n.startswith(PREFIX) and n.endswith(SUFFIX))

    def _used_bytes(self) -> int:
        total = 0
        for name in self._files():
            try:
                total += os.stat(os.path.join(self.directory, name)).st_size
            except OSError:
                pass
        return total

    def write(self, requests: List[Request], deadline: float, reserve: int = 0) -> Tuple[int, List[Request]]:
        """Spool what fits in the byte cap less ``reserve`` bytes before ``deadline`` (monotonic).

        Returns (number written, requests that could not be written). A file that cannot be
        written (a full /tmp: ENOSPC, EFBIG) is removed and hands every request back. Never raises.
        """
        if not requests or self.max_bytes <= 0:
            return 0, list(requests)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create spool directory %s: %s", self.directory, exc)
            return 0, list(requests)
        budget = self.max_bytes - self._used_bytes() - len(MAGIC) - reserve
        name = "%s%d-%d%s" % (PREFIX, time.time_ns(), os.getpid(), SUFFIX)
        final = os.path.join(self.directory, name)
        temp = final + ".tmp"
        written = 0
        left: List[Request] = []
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            log.warning("cannot write spool file %s: %s", temp, exc)
            return 0, list(requests)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC)
                for req in requests:
                    record = _encode(req)
                    if len(record) > budget or time.monotonic() >= deadline:
                        left.append(req)
                        continue
                    fh.write(record)
                    budget -= len(record)
                    written += 1
            if written:
                os.replace(temp, final)
            else:
                os.unlink(temp)
        except Exception as exc:  # /tmp full (ENOSPC, EFBIG), an I/O error, or a bug: none of it is spooled
            _unlink(temp)
            log.warning("cannot write spool file %s: %s; %d request(s) not spooled", temp, exc, len(requests),
                        exc_info=not isinstance(exc, OSError))
            return 0, list(requests)
        return written, left

    def load(self) -> LoadResult:
        """Read, then delete, every spool file of ours; corrupt ones are deleted, foreign ones kept."""
        result = LoadResult()
        now = time.time()
        budget = self.max_bytes
        for name in self._files():
            path = os.path.join(self.directory, name)
            try:
                size = os.stat(path).st_size
                if size > budget:
                    raise SpoolError("larger than the spool cap")
                with open(path, "rb") as fh:
                    requests = decode(fh.read(size + 1))
            except (OSError, SpoolError) as exc:
                result.corrupt_files += 1
                log.warning("ignoring unreadable spool file %s: %s", name, exc)
                _unlink(path)
                continue
            if any(r.public_key != self.public_key for r in requests):
                log.info("leaving spool file %s alone: written for another DSN", name)
                continue
            budget -= size
            _unlink(path)
            for req in requests:
                if now - req.received_at > self.max_age_s:
                    result.expired.append(req)
                else:
                    result.requests.append(req)
        return result


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
