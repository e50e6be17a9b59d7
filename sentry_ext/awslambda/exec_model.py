"""The execution model Lambda runs the extension in (``AWS_LAMBDA_INITIALIZATION_TYPE``, read by
config.py) and what it changes; and ``RestoreWatch``, which notices a SnapStart restore.

- on-demand / provisioned-concurrency: INVOKE and SHUTDOWN, frozen between invocations.
- snap-start: Init runs once at publish and the initialised sandbox (this process included) is
  snapshotted, then restored many times. The Extensions API has no RESTORE event: the ``/event/next``
  that was pending at the snapshot returns the first INVOKE of each restored copy. Connections
  opened before the snapshot lead nowhere after it, and monotonic times taken before it are not
  comparable with later ones.
- lambda-managed-instances: several invocations at once in one sandbox that is never frozen;
  extensions may register for SHUTDOWN only (INVOKE is refused with 403), there is no
  ``platform.runtimeDone``, and the Telemetry API wants subscription schema 2025-01-29.

Loaded before the first ``/event/next``: no imports beyond ``time`` and lambda_api (start-up budget: main.py).
"""

from __future__ import annotations

import time

from .extensions_api import TELEMETRY_SCHEMA

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional, Tuple

ON_DEMAND = "on-demand"
SNAP_START = "snap-start"
MANAGED_INSTANCES = "lambda-managed-instances"

MANAGED_TELEMETRY_SCHEMA = "2025-01-29"  # the only schema Lambda Managed Instances accept
# Wall time that passed beyond monotonic time across one /event/next before it counts as a
# restore (an NTP step is milliseconds; a snapshot is stored for minutes to days).
CLOCK_JUMP_S = 2.0


def is_managed(init_type: str) -> bool:
    return init_type == MANAGED_INSTANCES


def register_events(init_type: str) -> Tuple[str, ...]:
    """The Extensions API events to register for: Managed Instances refuse INVOKE."""
    return ("SHUTDOWN",) if is_managed(init_type) else ("INVOKE", "SHUTDOWN")


def telemetry_schema(init_type: str) -> str:
    return MANAGED_TELEMETRY_SCHEMA if is_managed(init_type) else TELEMETRY_SCHEMA


class RestoreWatch:
    """Tells, after each ``/event/next`` returns, whether the sandbox was restored from a snapshot
    while it waited: always for the first event of a ``snap-start`` sandbox, and whenever wall
    time moved on by more than ``jump_s`` beyond monotonic time (a VM snapshot suspends the
    monotonic clock; a freeze of an on-demand sandbox moves both alike)."""

    def __init__(self, init_type: str, jump_s: float = CLOCK_JUMP_S,
                 wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic) -> None:
        self._first = init_type == SNAP_START
        self.jump_s = jump_s
        self._wall = wall
        self._mono = mono
        self._before = (0.0, 0.0)

    def before_wait(self) -> None:
        self._before = (self._wall(), self._mono())

    def after_wait(self) -> Optional[str]:
        """Why this looks like a restore, or None."""
        wall0, mono0 = self._before
        jump = (self._wall() - wall0) - (self._mono() - mono0)
        if self._first:
            self._first = False
            return "first event after the SnapStart snapshot"
        if jump > self.jump_s:
            return "wall clock moved %.1f s more than the monotonic clock" % jump
        return None
