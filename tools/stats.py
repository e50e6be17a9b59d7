"""Summary statistics of the demo, the benchmark and the soak (one definition for all three)."""

from __future__ import annotations

import math
from typing import Iterable, Optional


def percentile(values: Iterable[float], pct: float) -> Optional[float]:
    """Nearest-rank percentile: the smallest value such that at least ``pct`` % of the values
    are <= it (always one of the values; ``pct`` 0 gives the minimum, 100 the maximum).
    None for no values."""
    vals = sorted(values)
    if not vals:
        return None
    rank = max(1, min(len(vals), math.ceil(pct * len(vals) / 100.0)))
    return vals[rank - 1]


def median(values: Iterable[Optional[float]]) -> Optional[float]:
    """The median (mean of the two middle values for an even count), None values ignored."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
