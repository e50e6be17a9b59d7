from __future__ import annotations

import os
import time
from pathlib import Path

from sentry_ext.delivery.request import Request
from sentry_ext.delivery.spool import MAGIC, Spool, decode


def make(i: int, key: str = "k", age: float = 0.0) -> Request:
    return Request(upstream_path="/api/1/envelope/", headers={"content-encoding": "gzip", "x-sentry-auth": "a"},
                   body=b"\x1f\x8b\n\nbody%d" % i, public_key=key, received_at=time.time() - age,
                   event_id="e%d" % i)


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "s"), 1 << 20, 3600, "k")
    written, left = spool.write([make(1), make(2)], time.monotonic() + 5)
    assert (written, left) == (2, [])
    result = spool.load()
    assert [(r.body, r.headers, r.event_id) for r in result.requests] == [(make(i).body, make(i).headers, "e%d" % i)
                                                                         for i in (1, 2)]
    assert os.listdir(tmp_path / "s") == []  # loaded files are removed
    assert spool.load().requests == []


def test_byte_cap_and_deadline(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), 300, 3600, "k")
    written, left = spool.write([make(i) for i in range(10)], time.monotonic() + 5)
    assert 0 < written < 10 and len(left) == 10 - written
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 300
    written, left = Spool(str(tmp_path / "b"), 1 << 20, 3600, "k").write([make(1)], time.monotonic() - 1)
    assert written == 0 and len(left) == 1


def test_corrupt_foreign_and_expired(tmp_path: Path) -> None:
    (tmp_path / "spool-1-1.sle").write_bytes(b"garbage")
    (tmp_path / "spool-2-1.sle").write_bytes(MAGIC + b'{"length": 100}\nshort')
    (tmp_path / "unrelated.txt").write_bytes(b"keep me")
    Spool(str(tmp_path), 1 << 20, 3600, "other").write([make(1, key="other")], time.monotonic() + 5)
    Spool(str(tmp_path), 1 << 20, 3600, "k").write([make(2, age=7200), make(3)], time.monotonic() + 5)
    result = Spool(str(tmp_path), 1 << 20, 3600, "k").load()
    assert result.corrupt_files == 2
    assert [r.event_id for r in result.requests] == ["e3"]
    assert [r.event_id for r in result.expired] == ["e2"]
    names = sorted(os.listdir(tmp_path))
    assert "unrelated.txt" in names and len(names) == 2  # foreign spool file left alone


def test_decode_rejects_bad_records() -> None:
    import pytest

    from sentry_ext.delivery.spool import SpoolError
    for data in (b"", MAGIC + b"{}\n", MAGIC + b'{"length":1,"headers":{},"path":"/x","key":"k","received_at":1}\nab',
                 MAGIC + b"no newline"):
        with pytest.raises(SpoolError):
            decode(data)
