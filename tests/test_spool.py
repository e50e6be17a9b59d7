from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from helpers import FullDisk
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
    from sentry_ext.delivery.spool import SpoolError

    for data in (b"", MAGIC + b"{}\n", MAGIC + b'{"length":1,"headers":{},"path":"/x","key":"k","received_at":1}\nab',
                 MAGIC + b"no newline"):
        with pytest.raises(SpoolError):
            decode(data)


# A spool write on a full /tmp, for real: a child whose file size limit (RLIMIT_FSIZE, SIGXFSZ
# ignored) makes the kernel fail the write with EFBIG part-way through the file.
FULL_TMP_CHILD = """
import json, resource, signal, sys, time
from sentry_ext.delivery.request import Request
from sentry_ext.delivery.spool import Spool
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
requests = [Request("/api/1/envelope/", {}, b"x" * 1000, "k", event_id="e%d" % i) for i in range(5)]
spool = Spool(sys.argv[1], 1 << 20, 3600, "k")
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
written, left = spool.write(requests, time.monotonic() + 5)
print(json.dumps([written, [r.event_id for r in left]]))
"""


def test_a_write_that_fills_the_disk_hands_every_request_back_and_leaves_no_temp_file(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    directory = tmp_path / "spool"
    proc = subprocess.run([sys.executable, "-c", FULL_TMP_CHILD, str(directory)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [0, ["e%d" % i for i in range(5)]], proc.stderr
    assert "File too large" in proc.stderr, proc.stderr  # the kernel's EFBIG, logged as the reason
    assert os.listdir(directory) == []  # no half-written .tmp left behind


def test_enospc_mid_file_returns_the_requests_as_unsaved_and_the_next_write_can_succeed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sentry_ext.delivery import spool as spool_module

    disk = FullDisk(room=len(MAGIC) + 60)  # the magic line and part of the first record fit
    monkeypatch.setattr(spool_module, "os", disk)
    spool = Spool(str(tmp_path), 1 << 20, 3600, "k")
    requests = [make(i) for i in range(5)]
    written, left = spool.write(requests, time.monotonic() + 5)
    assert disk.refused == 1
    assert written == 0 and left == requests
    assert os.listdir(tmp_path) == []
    disk.room = 1 << 20  # room again (the function freed /tmp): the spool works as before
    assert spool.write(requests[:2], time.monotonic() + 5) == (2, [])
    assert [r.event_id for r in spool.load().requests] == ["e0", "e1"]
