"""tools/stats.py: the one percentile definition the demo, the benchmark and the soak share."""

from __future__ import annotations

from tools.stats import median, percentile


def test_nearest_rank_percentile() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]  # the textbook nearest-rank example
    assert percentile(values, 5) == 15.0
    assert percentile(values, 30) == 20.0
    assert percentile(values, 40) == 20.0
    assert percentile(values, 50) == 35.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 0) == 15.0


def test_percentile_is_always_a_value_and_order_free() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted input
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.5) == 100.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 95) is None


def test_median() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert median([None, 1.0]) == 1.0
    assert median([]) is None
