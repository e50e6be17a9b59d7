"""When to drain: one ``FlushDecision`` per invocation from the configured flush mode.

``end`` waits for the runtime's ``platform.runtimeDone`` and drains before the next ``/event/next``;
``background`` leaves delivery to the sender threads; ``adaptive`` picks ``background`` while
invocations come often (mean gap over the last ``window`` at most ``gap_s``, judged once
``MIN_SEEN`` invocations are in: two gaps), ``end`` otherwise.
Loaded before the first ``/event/next``: stdlib modules already imported only (start-up budget: main.py).
"""

from __future__ import annotations

import collections
import enum
import time

from ..util import logs
from ..awslambda.exec_model import is_managed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Deque

    from ..config import Config

log = logs.get(__name__)  # imports logging at its first use
END = "end"
BACKGROUND = "background"
ADAPTIVE = "adaptive"
# Invocations seen before adaptive judges the gap (2 gaps). Waiting for a full window (20) made the
# first 19 invocations of every sandbox pay the end-of-invocation drain: at 128 MB that is about
# a third of the billed duration (bench --cost), for functions that are plainly frequent.
MIN_SEEN = 3


class FlushDecision(enum.Enum):
    """What the lifecycle loop does after one INVOKE."""

    END = "end"                # wait for runtimeDone, drain, then call /event/next
    BACKGROUND = "background"  # call /event/next at once; the senders deliver meanwhile


class FlushControl:
    """The flush mode (the only copy of it) and the adaptive rule, on an injected monotonic clock.

    Written by the lifecycle thread only (``decide``, ``fall_back``); other threads may read ``mode``.
    """

    def __init__(self, mode: str, window: int, gap_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in (END, BACKGROUND, ADAPTIVE):
            raise ValueError("unknown flush mode %r" % mode)
        self.mode = mode
        self.gap_s = gap_s
        self._clock = clock
        self._invokes: Deque[float] = collections.deque(maxlen=max(2, window))
        self._adaptive_last = FlushDecision.END  # adaptive's previous decision: a change is logged

    @classmethod
    def from_config(cls, cfg: Config) -> "FlushControl":
        # Lambda Managed Instances never freeze and send no INVOKE: ``end`` and ``adaptive`` have
        # nothing to wait for, so the senders deliver continuously and SHUTDOWN drains.
        mode = BACKGROUND if is_managed(cfg.init_type) else cfg.flush_mode
        return cls(mode, cfg.adaptive_window, cfg.adaptive_gap_s)

    def decide(self) -> FlushDecision:
        """The decision for the invocation that starts now (``adaptive`` records its time)."""
        if self.mode == END:
            return FlushDecision.END
        if self.mode == BACKGROUND:
            return FlushDecision.BACKGROUND
        invokes = self._invokes
        invokes.append(self._clock())
        if len(invokes) < min(MIN_SEEN, invokes.maxlen):  # type: ignore[type-var]
            return FlushDecision.END  # too few invocations seen to call them frequent
        mean_gap = (invokes[-1] - invokes[0]) / (len(invokes) - 1)
        decision = FlushDecision.BACKGROUND if mean_gap <= self.gap_s else FlushDecision.END
        if decision is not self._adaptive_last:
            log.info("adaptive: switching from %s to %s flushing (mean gap %.1f s over the last %d invocations)",
                     self._adaptive_last.value, decision.value, mean_gap, len(invokes))
            self._adaptive_last = decision
        return decision

    def forget(self) -> None:
        """Drop the invocation times seen (taken on a monotonic clock that a snapshot restore
        made incomparable with the next ones)."""
        self._invokes.clear()

    def fall_back(self) -> None:
        """Flush in the background from now on (telemetry is unavailable, so ``end`` cannot work)."""
        self.mode = BACKGROUND
