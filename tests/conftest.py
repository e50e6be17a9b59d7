"""Shared fixtures: the repo root on sys.path, a fake upstream and live pipelines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from helpers import pipelines  # noqa: E402,F401  (a fixture, shared by every test module)
from tools.fake_upstream import FakeUpstream  # noqa: E402


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    up.start()
    try:
        yield up
    finally:
        up.stop()
