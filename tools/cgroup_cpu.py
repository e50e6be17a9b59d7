"""A CPU-quota cgroup for the emulated sandbox: Lambda's memory/1769 of one vCPU, reproduced with
the cgroup v1 ``cpu`` controller (``cpu.cfs_quota_us`` per ``cpu.cfs_period_us``) or cgroup v2's
``cpu.max``, whichever this machine lets us create.

``CpuQuota.unavailable()`` says why not (no controller, no rights); ``with CpuQuota(...) as q``
creates a child cgroup, and ``q.join`` (an ``Emulator(preexec=...)``) moves each process the
emulator launches into it between fork and exec, so every sandbox process runs under the quota
from its first instruction. The cgroup is removed on exit (its processes must be gone by then:
the emulator reaps them when it closes).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, Optional

V1_ROOT = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")
LAMBDA_FULL_VCPU_MB = 1769  # Lambda: memory/1769 of one vCPU
DEFAULT_PERIOD_US = 20000
MIN_QUOTA_US = 1000  # the kernel refuses a smaller quota
REMOVE_WAIT_S = 3.0


def lambda_quota_us(memory_mb: int, period_us: int = DEFAULT_PERIOD_US) -> int:
    """The quota (µs per ``period_us``) of a function with ``memory_mb``: 1447 µs per 20 ms at 128 MB."""
    return max(MIN_QUOTA_US, round(period_us * memory_mb / LAMBDA_FULL_VCPU_MB))


def _v2_usable() -> bool:
    try:
        return "cpu" in (V2_ROOT / "cgroup.subtree_control").read_text().split()
    except OSError:
        return False


class CpuQuota:
    """A child cgroup with a CPU quota; processes join it with ``join`` (in the child, before exec)."""

    def __init__(self, quota_us: int, period_us: int = DEFAULT_PERIOD_US, name: Optional[str] = None) -> None:
        self.quota_us = quota_us
        self.period_us = period_us
        self.name = name or "sentry-ext-bench-%d" % os.getpid()
        self.v2 = not (V1_ROOT / "cpu.cfs_quota_us").exists() and _v2_usable()
        self.path = (V2_ROOT if self.v2 else V1_ROOT) / self.name
        self._procs = str(self.path / "cgroup.procs")

    @staticmethod
    def unavailable() -> Optional[str]:
        """Why no CPU-quota cgroup can be made here (None if one can)."""
        if (V1_ROOT / "cpu.cfs_quota_us").exists():
            root = V1_ROOT
        elif _v2_usable():
            root = V2_ROOT
        else:
            return "no cgroup cpu controller (neither %s/cpu.cfs_quota_us nor cpu in %s/cgroup.subtree_control)" % (
                V1_ROOT, V2_ROOT)
        if not os.access(str(root), os.W_OK):
            return "no rights to create a cgroup under %s (run as root, or delegate it)" % root
        probe = root / ("sentry-ext-probe-%d" % os.getpid())
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            return "cannot create a cgroup under %s: %s" % (root, exc)
        return None

    def __enter__(self) -> "CpuQuota":
        self.path.mkdir()
        try:
            if self.v2:
                (self.path / "cpu.max").write_text("%d %d" % (self.quota_us, self.period_us))
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
                (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        except OSError:
            self.path.rmdir()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def join(self) -> None:
        """Move the calling process into the cgroup (an ``Emulator(preexec=...)``: runs in the child
        between fork and exec, so only plain system calls here)."""
        fd = os.open(self._procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")  # 0: the writing process itself
        finally:
            os.close(fd)

    def stat(self) -> Dict[str, int]:
        """``cpu.stat`` (nr_periods, nr_throttled, throttled_time / throttled_usec, ...)."""
        out: Dict[str, int] = {}
        try:
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if value.strip().isdigit():
                    out[key] = int(value)
        except OSError:
            pass
        return out

    def remove(self) -> None:
        """Remove the cgroup, waiting (bounded) for its last processes to be reaped."""
        deadline = time.monotonic() + REMOVE_WAIT_S
        while self.path.exists():
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
