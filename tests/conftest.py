"""Shared fixtures: the repo root on sys.path, a fake upstream, live pipelines, and free ports."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from helpers import pipelines  # noqa: E402,F401  (a fixture, shared by every test module)
from tools.fake_upstream import FakeUpstream  # noqa: E402


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    up.start()
    try:
        yield up
    finally:
        up.stop()
