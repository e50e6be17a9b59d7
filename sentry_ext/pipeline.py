"""Wires queue, transport, sender threads, ingest server, telemetry listener and spool.

Imported only after registration: it pulls in urllib3, ssl and http.server.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Dict, Optional

from .buffer import BoundedQueue
from .config import Config
from .forwarder import Forwarder
from .ingest import IngestServer
from .spool import Spool
from .stats import Stats
from .telemetry import RuntimeDoneTracker, TelemetryListener
from .transport import Transport

log = logging.getLogger(__name__)

SPOOL_RESERVE_S = 0.15  # kept back from the SHUTDOWN drain to write the spool


class Pipeline:
    """Everything between the SDK's POST and the upstream's reply."""

    def __init__(self, cfg: Config, ingest_sock: socket.socket,
                 telemetry_sock: Optional[socket.socket]) -> None:
        assert cfg.dsn is not None
        self.cfg = cfg
        self.stats = Stats()
        self.queue = BoundedQueue(cfg.queue_max_items, cfg.queue_max_bytes)
        self.transport = Transport(cfg)
        self.forwarder = Forwarder(self.queue, self.transport, self.stats, cfg.senders, cfg.max_attempts)
        self.server = IngestServer(ingest_sock, cfg, self.queue, self.stats, self._health_extra)
        self.tracker = RuntimeDoneTracker()
        self.listener = TelemetryListener(telemetry_sock, self.tracker) if telemetry_sock else None
        self.spool = Spool(cfg.spool_dir, cfg.spool_max_bytes, cfg.spool_max_age_s, cfg.dsn.public_key)
        self.mode = cfg.flush_mode
        self._stopped = threading.Event()

    def start(self) -> None:
        self.server.start()
        if self.listener is not None:
            self.listener.start()
        self.forwarder.start()
        self._load_spool()

    def _health_extra(self) -> Dict[str, Any]:
        return {"flush_mode": self.mode, "upstream": self.cfg.dsn.masked() if self.cfg.dsn else None}

    def _load_spool(self) -> None:
        loaded = self.spool.load()
        for req in loaded.expired:
            self.stats.drop("spool_expired")
        queued = 0
        for req in loaded.requests:
            if self.queue.put(req):
                queued += 1
            else:
                self.stats.drop("queue_overflow")
        if queued or loaded.expired or loaded.corrupt_files:
            self.stats.incr("spool_loaded", queued)
            log.info("spool: %d request(s) from an earlier sandbox queued, %d expired, %d corrupt file(s)",
                     queued, len(loaded.expired), loaded.corrupt_files)

    def flush(self, timeout: float) -> bool:
        """Deliver everything queued and in flight within ``timeout`` seconds."""
        return self.forwarder.flush(timeout)

    def shutdown(self, deadline: float) -> Dict[str, int]:
        """Drain until ``deadline`` (monotonic) less the spool reserve, spool the rest, stop."""
        drained = self.forwarder.flush(deadline - SPOOL_RESERVE_S - time.monotonic())
        self.forwarder.stop()
        leftovers = self.queue.take_all()
        written, unsaved = self.spool.write(leftovers, deadline) if leftovers else (0, [])
        if written:
            self.stats.incr("spooled", written)
            log.info("spooled %d unsent request(s) to %s for the next sandbox", written, self.cfg.spool_dir)
        if unsaved:
            self.stats.drop("network_error", len(unsaved))
            log.warning("lost %d unsent request(s) at shutdown (spool full or deadline)", len(unsaved))
        return {"drained": int(drained), "spooled": written, "lost": len(unsaved)}
