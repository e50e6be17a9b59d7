"""Readers of /proc/<pid> for the emulator, the benchmark and the soak (Linux; None when the
process is gone or /proc is unavailable)."""

from __future__ import annotations

import glob
import os
from typing import Dict, List, Optional

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> Optional[List[bytes]]:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, first)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].split()


def state(pid: int) -> Optional[str]:
    """Scheduler state letter (R, S, T, t, Z, ...) of ``pid``."""
    fields = _stat_fields(pid)
    return fields[0].decode("ascii", "replace") if fields else None


def cpu_ms(pid: int) -> Optional[float]:
    """CPU time (user+system) of the process, exited threads included, in ms (clock-tick resolution)."""
    fields = _stat_fields(pid)
    try:
        return (int(fields[11]) + int(fields[12])) * 1000.0 / CLK_TCK if fields else None
    except (IndexError, ValueError):
        return None


def cpu_precise_ms(pid: int) -> Optional[float]:
    """CPU time of the live threads from schedstat (ns resolution), or ``cpu_ms`` without schedstat."""
    total = 0
    found = False
    for path in glob.glob("/proc/%d/task/*/schedstat" % pid):
        try:
            with open(path, "rb") as fh:
                total += int(fh.read().split()[0])
                found = True
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e6 if found else cpu_ms(pid)


def status_fields(pid: int, *keys: str) -> Dict[str, int]:
    """Integer fields of /proc/<pid>/status (``VmRSS``/``VmHWM`` in KiB, ``Threads``, ...);
    the keys found, empty if the process is gone."""
    out: Dict[str, int] = {}
    try:
        with open("/proc/%d/status" % pid, "r", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in keys:
                    out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def status_kib(pid: int, key: str) -> Optional[int]:
    """One ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    return status_fields(pid, key).get(key)


def fd_count(pid: int) -> Optional[int]:
    """Number of open file descriptors of ``pid``."""
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None



def _children(pid: int) -> List[int]:
    out: List[int] = []
    for path in glob.glob("/proc/%d/task/*/children" % pid):
        try:
            with open(path, "rb") as fh:
                out.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
    return out


def tree_rss_kib(pids: List[int], limit: int = 4096) -> int:
    """Resident memory (KiB) of ``pids`` and all their descendants: what a sandbox-wide memory
    limit counts. Reads /proc/<pid>/statm and the children lists (at most ``limit`` processes)."""
    page_kib = max(1, (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096) // 1024)
    total = 0
    todo = list(pids)
    seen = set()
    while todo and len(seen) < limit:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open("/proc/%d/statm" % pid, "rb") as fh:
                total += int(fh.read().split()[1]) * page_kib
        except (OSError, ValueError, IndexError):
            continue
        todo.extend(_children(pid))
    return total
