"""What the emulator knows about the function and one execution environment: the function's
identity, the results handed to callers, and the state of a sandbox between an Init and its
Shutdown (its processes, registered extensions, the runtime and the invocation in flight).
All of it is guarded by the emulator's one lock/condition."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import time
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Tuple, Union

if TYPE_CHECKING:
    from tools.emulator.processes import Proc
    from tools.emulator.telemetry import Subscriber

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
FUNCTION_VERSION = "$LATEST"

#: Bounds of the emulator's waiting loops (bounded in count, yet forever for any real run).
LONG_POLL_MAX_S = 3600.0
MAX_WAIT_ROUNDS = 10_000_000
TELEMETRY_LOG_MAX = 2000


class EmulatorError(RuntimeError):
    """The emulated sandbox could not be brought up or driven."""


@dataclasses.dataclass
class ShutdownResult:
    """Outcome of a Shutdown phase (explicit ``shutdown()`` or a reset after a timeout/crash).

    ``exit_codes``/``exit_ms``/``killed`` are keyed by extension executable basename;
    ``exit_ms`` is measured from SHUTDOWN delivery to process exit.  Exit codes follow the
    ``subprocess`` convention (negative = killed by that signal).
    """

    reason: str
    deadline_ms: int
    exit_codes: Dict[str, Optional[int]] = dataclasses.field(default_factory=dict)
    exit_ms: Dict[str, Optional[float]] = dataclasses.field(default_factory=dict)
    killed: List[str] = dataclasses.field(default_factory=list)
    runtime_exit_code: Optional[int] = None


@dataclasses.dataclass
class InvokeResult:
    """Timings and outcome of one invocation.

    ``runtime_ms``: INVOKE delivered -> runtime posted its response (None on timeout/crash).
    ``post_runtime_ms``: runtime response -> last extension's ``next`` (what Lambda bills as
    PostRuntimeExtensionsDuration; clamped at 0; up to the deadline if an extension never
    called ``next``; None if the runtime never responded).
    ``extension_next_ms``: per registered extension name, runtime response -> that extension's
    ``next`` (negative if it called ``next`` before the runtime responded; absent if it never
    called it before the deadline or the runtime never responded).
    """

    request_id: str
    status: str
    response: Optional[bytes]
    deadline_ms: int
    runtime_ms: Optional[float]
    post_runtime_ms: Optional[float]
    extension_next_ms: Dict[str, float]
    extensions_before_deadline: Dict[str, bool]
    freeze_t: Optional[float]
    reset: bool
    error_type: Optional[str] = None
    duration_ms: Optional[float] = None
    cold_start: bool = False
    init_ms: Optional[float] = None
    shutdown: Optional[ShutdownResult] = None
    init_failed: bool = False  # Init failed before this invocation could start (see Emulator.invoke)




def iso_now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_ms() -> int:
    return int(time.time() * 1000)


def payload_bytes(payload: Union[Dict[str, Any], bytes, None]) -> bytes:
    """The body of an invocation: ``payload`` as is if bytes, else as JSON (None is ``{}``)."""
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    return json.dumps(payload if payload is not None else {}).encode()



@dataclasses.dataclass
class Invocation:
    request_id: str
    payload: bytes
    deadline_ms: int
    deadline_mono: float
    trace_id: str
    arn: str
    t_deliver: float
    t_response: Optional[float] = None
    response: Optional[bytes] = None
    status: Optional[str] = None
    error_type: Optional[str] = None
    finished: bool = False
    oom_killed: bool = False  # the emulator killed the runtime for exceeding memory_mb



@dataclasses.dataclass
class Ext:
    ext_id: str
    name: str
    events: Tuple[str, ...]
    registered_t: float
    queue: Deque[bytes] = dataclasses.field(default_factory=collections.deque)
    done: bool = False  # waiting in next with nothing pending
    next_t: Optional[float] = None
    errored: Optional[str] = None
    subscriber: Optional[Subscriber] = None


@dataclasses.dataclass
class RuntimeState:
    queue: Deque[Invocation] = dataclasses.field(default_factory=collections.deque)
    done: bool = False
    next_t: Optional[float] = None
    first_next_t: Optional[float] = None
    init_error: Optional[Dict[str, Any]] = None
    init_done_emitted: bool = False  # platform.initRuntimeDone sent


class Sandbox:
    """State of one execution environment instance (between an Init and its Shutdown)."""

    def __init__(self, gen: int) -> None:
        self.gen = gen
        self.phase = "init"  # init | ready | invoke | shutdown | dead
        self.init_start_t = time.monotonic()
        self.procs: List[Proc] = []  # extensions
        self.runtime: Optional[Proc] = None
        self.extensions: Dict[str, Ext] = {}
        self.rt = RuntimeState()
        self.invocation: Optional[Invocation] = None
        self.telemetry_log: Deque[bytes] = collections.deque(maxlen=TELEMETRY_LOG_MAX)
        self.subscribers: List[Subscriber] = []
        # Figures the next platform.report carries once: initDurationMs after an on-demand Init,
        # restoreDurationMs after a SnapStart restore (as Lambda reports a cold start).
        self.report_once: Dict[str, float] = {}

    @property
    def dead(self) -> bool:
        return self.phase == "dead"

    def all_procs(self) -> List[Proc]:
        procs = list(self.procs)
        if self.runtime is not None:
            procs.append(self.runtime)
        return procs

