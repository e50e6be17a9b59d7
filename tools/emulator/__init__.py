"""Local emulator of the AWS Lambda execution environment (sandbox).

Serves the Runtime API (for the real ``awslambdaric``), the Extensions API and the
Telemetry API on one HTTP server bound to 127.0.0.1, launches every executable in
``<opt>/extensions`` plus a runtime process, and drives the Lambda lifecycle:
Init -> Invoke* (with SIGSTOP freezes in between) -> Shutdown, including the
timeout/crash reset that Lambda performs.

Failure modes, produced the way Lambda produces them (telemetry records and a reset, i.e.
SHUTDOWN with reason ``timeout``/``failure`` to the extensions, then a fresh Init on the next invoke):

- timeout: the runtime does not answer by ``timeout_s``: runtimeDone/report status ``timeout``,
  errorType ``Sandbox.Timedout``; reason ``timeout``;
- out of memory: the resident memory of the whole sandbox (every extension and the runtime, with
  their children), polled every 20 ms during an invoke, exceeds ``memory_mb``: the runtime is
  SIGKILLed, status ``error``, errorType ``Runtime.OutOfMemory``, report ``maxMemoryUsedMB`` =
  ``memorySizeMB``; reason ``failure``;
- runtime exit: the runtime process ends during an invoke: status ``error``, errorType
  ``Runtime.ExitError``; reason ``failure``;
- failed Init: the runtime posts ``/runtime/init/error`` (or exits during Init):
  initRuntimeDone/initReport status ``error`` with its errorType, reason ``failure``; ``start()``
  raises ``InitFailed`` (an EmulatorError), ``invoke()`` returns an ``error`` result with
  ``init_failed`` set.

Library use::

    with Emulator(opt_dir, None, task_root) as emu:
        emu.start()
        result = emu.invoke({"hello": "world"})
        emu.wait_frozen_for(2.0)
        ...
        emu.shutdown()

Command line: ``python -m tools.emulator --opt DIR --task-root DIR ...`` (see ``cli.main``).

Layout (one module a job; each API is a mixin over ``base.EmulatorBase``, whose one lock and
condition guard all state):

- ``state.py``: the function's identity, ``InvokeResult``/``ShutdownResult``, and the state of one
  sandbox (``Sandbox``: processes, registered ``Ext``s, ``RuntimeState``, the ``Invocation``);
- ``server.py``: the one HTTP server of the three APIs; ``Emulator._handle`` routes to them;
- ``runtime_api.py``, ``extensions_api.py``, ``telemetry.py`` (subscriptions, records, delivery);
- ``processes.py``: sandbox/process control (environment, launch, output, exits, signals,
  freeze/thaw with SIGSTOP/SIGCONT, kill and reap; /proc through ``tools.procfs``);
- ``function_logs.py``: Telemetry ``function`` records from the runtime's stdout/stderr lines and
  from awslambdaric's framed log pipe (``_LAMBDA_TELEMETRY_LOG_FD``), ahead of its runtimeDone;
- ``lifecycle.py``: the Init, Invoke and Shutdown phases (timeouts and crashes reset);
- ``snapstart.py``: ``init_type="snap-start"``: the freeze after Init is a snapshot, ``restore()``
  thaws the same processes (``runtime/restore/next``, ``platform.restore*`` telemetry);
- ``concurrency.py``: ``init_type="lambda-managed-instances"``: awslambdaric workers serve
  overlapping invocations (``invoke_concurrently``), SHUTDOWN-only extensions, no freeze;
- ``emulator.py``: ``Emulator``, the public API; ``cli.py``/``__main__.py``: the command line.

Only processes this emulator started are ever signalled (see ``processes.py``).
"""

from tools.emulator.cli import main
from tools.emulator.emulator import Emulator
from tools.emulator.lifecycle import InitFailed
from tools.emulator.state import EmulatorError, InvokeResult, ShutdownResult

__all__ = ["Emulator", "EmulatorError", "InitFailed", "InvokeResult", "ShutdownResult", "main"]
