"""Rate-limit parsing (Sentry's documented examples) and the per-key store, on a fixed clock."""

from __future__ import annotations

from email.utils import formatdate
from typing import List

import pytest

from helpers import FakeClock
from sentry_ext.protocol.rate_limits import RateLimits, parse_rate_limits, parse_retry_after

NOW = 1_700_000_000.0
KEY = "k" * 32


@pytest.mark.parametrize("header,expected", [
    # develop.sentry.dev "Rate Limiting" examples
    ("60:transaction:key", {"transaction": NOW + 60}),
    ("2700:default;error;security:organization", {"default": NOW + 2700, "error": NOW + 2700,
                                                  "security": NOW + 2700}),
    ("60:transaction:key, 2700:default;error;security:organization",
     {"transaction": NOW + 60, "default": NOW + 2700, "error": NOW + 2700, "security": NOW + 2700}),
    ("60::organization", {None: NOW + 60}),                       # empty categories: all of them
    ("60", {None: NOW + 60}),                                     # scope omitted too
    ("2.5:error:key", {"error": NOW + 2.5}),                      # float seconds
    ("60:error:key:quota_exceeded:custom:future_field", {"error": NOW + 60}),  # unknown fields
    ("60:error;unknown_cat:key", {"error": NOW + 60}),            # unknown category ignored ...
    ("60:unknown_cat:key", {}),                                   # ... and never becomes "all"
    ("60:error:key, 120:error:organization, 30:error:project", {"error": NOW + 120}),  # longest wins
    ("abc:error, -5:error, nan:error, inf:error, :error, , ", {}),  # garbage entries skipped
    ("10:error, bogus, 20:transaction", {"error": NOW + 10, "transaction": NOW + 20}),
    (" 60 : error ; transaction : key ", {"error": NOW + 60, "transaction": NOW + 60}),
    ("60:trace_metric:key", {"trace_metric": NOW + 60}),          # sentry-python 2.x's newest category
])
def test_parse_rate_limits(header: str, expected: dict) -> None:
    assert parse_rate_limits(header, NOW) == expected


def test_parse_retry_after() -> None:
    assert parse_retry_after("30", NOW) == NOW + 30
    assert parse_retry_after("1.5", NOW) == NOW + 1.5
    assert parse_retry_after(formatdate(NOW + 120, usegmt=True), NOW) == NOW + 120
    assert parse_retry_after(formatdate(NOW - 120, usegmt=True), NOW) == NOW  # past date: now
    for bad in (None, "", "soon", "-3"):
        assert parse_retry_after(bad, NOW) is None


def test_store_updates_from_any_status_and_bare_429() -> None:
    clock = FakeClock(NOW)
    limits = RateLimits(clock)
    assert not limits.update(KEY, 200, {"Content-Type": "application/json"})
    assert limits.active(KEY) == {} and not limits.any_active(KEY)
    # the header is honoured on a 200 (lower-case names, as a plain dict, too)
    assert limits.update(KEY, 200, {"x-sentry-rate-limits": "60:error:key"})
    assert limits.is_limited(KEY, "error") and not limits.is_limited(KEY, "transaction")
    assert not limits.is_limited("other" * 8, "error")  # per key
    # a 429 with the header uses only the header
    limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "10:transaction:key", "Retry-After": "999"})
    assert limits.active(KEY) == {"error": NOW + 60, "transaction": NOW + 10}
    # a 503 with Retry-After is not a rate limit
    assert not limits.update(KEY, 503, {"Retry-After": "30"})


@pytest.mark.parametrize("headers,seconds", [
    ({}, 60),                                                       # neither header: 60 s
    ({"Retry-After": "17"}, 17),
    ({"Retry-After": formatdate(NOW + 90, usegmt=True)}, 90),
    ({"Retry-After": "garbage"}, 60),
])
def test_bare_429_limits_everything(headers: dict, seconds: int) -> None:
    limits = RateLimits(FakeClock(NOW))
    assert limits.update(KEY, 429, headers)
    assert limits.active(KEY) == {None: NOW + seconds}
    assert limits.is_limited(KEY, "error") and limits.is_limited(KEY, "anything")


def test_longest_limit_is_kept_across_replies() -> None:
    limits = RateLimits(FakeClock(NOW))
    limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "120:error:key"})
    limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "5:error:key"})
    assert limits.active(KEY) == {"error": NOW + 120}


def test_limits_expire_on_the_clock() -> None:
    clock = FakeClock(NOW)
    limits = RateLimits(clock)
    limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "1:error:key, 30:transaction:key"})
    clock.now = NOW + 0.999
    assert limits.is_limited(KEY, "error")
    clock.now = NOW + 1.0
    assert not limits.is_limited(KEY, "error") and limits.is_limited(KEY, "transaction")
    assert limits.active(KEY) == {"transaction": NOW + 30}
    clock.now = NOW + 30
    assert not limits.any_active(KEY) and limits.active(KEY) == {} and limits.header_value(KEY) == ""


def test_header_value_rounds_up_and_groups() -> None:
    clock = FakeClock(NOW)
    limits = RateLimits(clock)
    limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "60:error;default:key, 2.5:transaction:key"})
    clock.now = NOW + 0.4
    assert limits.header_value(KEY) == "60:default;error:key, 3:transaction:key"
    # what we send parses back (with sentry-python's int() too) to the same categories
    back = parse_rate_limits(limits.header_value(KEY), clock.now)
    assert set(back) == {"error", "default", "transaction"}
    for entry in limits.header_value(KEY).split(","):
        int(entry.strip().split(":")[0])
    clock.now = NOW + 59.2
    assert limits.header_value(KEY) == "1:default;error:key"


def test_header_value_for_all_categories() -> None:
    clock = FakeClock(NOW)
    limits = RateLimits(clock)
    limits.update(KEY, 429, {"Retry-After": "60"})
    limits.update(KEY, 200, {"X-Sentry-Rate-Limits": "60:error:key, 10:transaction:key"})
    assert limits.header_value(KEY) == "60::key, 10:transaction:key"
    assert limits.retry_after(KEY) == 60


def test_retry_after_per_categories() -> None:
    clock = FakeClock(NOW)
    limits = RateLimits(clock)
    limits.update(KEY, 200, {"X-Sentry-Rate-Limits": "60:error:key, 10.2:transaction:key"})
    assert limits.retry_after(KEY) == 60
    assert limits.retry_after(KEY, ["transaction"]) == 11
    assert limits.retry_after(KEY, ["span"]) == 1  # nothing applies: the minimum


def test_store_is_thread_safe_under_concurrent_updates() -> None:
    import threading

    limits = RateLimits(FakeClock(NOW))
    errors: List[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(200):
                limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "%d:error:key" % (i * 200 + j)})
                limits.header_value(KEY)
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads) and not errors
    assert limits.active(KEY) == {"error": NOW + 799}
