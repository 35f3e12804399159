"""The database sink of the audit trail: records buffered in memory, written in batches.

The call path only appends to a bounded deque (`accept`); a thread of its own wakes every
`MCPPOOL_AUDIT_FLUSH_SECONDS` (or when a batch is full) and writes what is there with one
`bulk_create`. A database that is away costs records, not calls: the buffer keeps the newest
`MCPPOOL_AUDIT_BUFFER` records and counts the ones it had to drop.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import deque
from functools import lru_cache
from typing import Final

from django.conf import settings
from django.db import close_old_connections, connections

from audit.models import AuditEntry, PoolAuditSettings
from balancing.audit import AuditRecord

log = logging.getLogger(__name__)

BATCH: Final = 500
_FIELDS: Final = (
    "kind", "transport", "key_name", "key_prefix", "subject", "pool", "tool", "server", "attempts",
    "outcome", "status", "latency_ms", "bytes_in", "bytes_out", "client_address", "trace_id",
    "session", "arguments", "result", "change",
)  # fmt: skip


def entry_of(record: AuditRecord) -> AuditEntry:
    entry = AuditEntry(at=dt.datetime.fromtimestamp(record.at, dt.UTC))
    for name in _FIELDS:
        setattr(entry, name, getattr(record, name))
    entry.latency_ms = round(record.latency_ms, 3)
    return entry


class DatabaseSink:
    def __init__(self, *, flush_seconds: float, buffer: int) -> None:
        self.flush_seconds = flush_seconds
        self._pools: dict[str, tuple[bool, int]] = {}  # slug -> (store calls, payload bytes)
        self._buffer: deque[AuditRecord] = deque(maxlen=buffer)
        self._lock = threading.Lock()  # one flush at a time (the thread, a test, shutdown)
        self._running = threading.Lock()  # starting and ending the thread
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0

    # ---- what the call path asks (no database) -----------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self._pools)

    def payload_cap(self, pool: str) -> int:
        found = self._pools.get(pool)
        return found[1] if found else 0

    def accept(self, record: AuditRecord) -> None:
        found = self._pools.get(record.pool)
        if record.kind != "tool_call" or found is None or not found[0]:
            return
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1  # the oldest goes: the database has been away a while
        self._buffer.append(record)
        if self._thread is None:
            with self._running:
                if self._thread is None:
                    self._start()
        elif len(self._buffer) >= BATCH:
            self._wake.set()

    # ---- off the event loop -----------------------------------------------------------------
    def refresh(self) -> None:
        rows = PoolAuditSettings.objects.filter(pool__isnull=False).values_list(
            "pool__slug", "store_calls", "payload_bytes"
        )
        self._pools = {slug: (store, cap) for slug, store, cap in rows if store or cap}

    def flush(self) -> int:
        """Write what is buffered now; returns how many rows were written."""
        with self._lock:
            batch: list[AuditRecord] = []
            while self._buffer and len(batch) < BATCH * 10:
                batch.append(self._buffer.popleft())
            if not batch:
                return 0
            try:
                AuditEntry.objects.bulk_create([entry_of(r) for r in batch], batch_size=BATCH)
            except Exception as exc:
                # Put them back in front (the deque keeps the newest if that overflows).
                self._buffer.extendleft(reversed(batch))
                log.warning("audit rows not written yet (%d waiting): %s", len(self._buffer), exc)
                return 0
            self.written += len(batch)
            return len(batch)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mcppool-audit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Flush every `flush_seconds` while records come; end (closing the thread's database
        connection) after a round that found nothing, until the next record starts it again."""
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            close_old_connections()
            written = 0
            while (batch := self.flush()) > 0:
                written += batch
            with self._running:
                if not written and not self._buffer:
                    self._thread = None
                    connections.close_all()
                    return


@lru_cache(maxsize=1)
def database_sink() -> DatabaseSink:
    return DatabaseSink(
        flush_seconds=settings.MCPPOOL_AUDIT_FLUSH_SECONDS, buffer=settings.MCPPOOL_AUDIT_BUFFER
    )
