"""Shared fixtures: the repo root on sys.path and a fake upstream."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.fake_upstream import FakeUpstream  # noqa: E402

KEY = "0123456789abcdef0123456789abcdef"
PROJECT = "42"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    up.start()
    try:
        yield up
    finally:
        up.stop()
