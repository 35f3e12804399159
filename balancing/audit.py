"""The audit trail's records and where they go: a JSON log stream, and sinks (the database).

The call path builds one `AuditRecord` per tool call (REST and MCP) and `emit`s it: a JSON line on
the `mcppool.audit` logger when `MCPPOOL_AUDIT_LOG` is on, and a hand-off to each registered sink.
The `audit` app registers the database sink (buffered, written in batches by its own thread), so
`balancing` never imports it and the call path never waits on the database.

Config changes (admin, REST, YAML) are recorded the same way, with `kind = "config_change"`.
Never in a record: an API key's secret (only its name and prefix), a session id (only a hash).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Protocol

import orjson

LOGGER_NAME: Final = "mcppool.audit"
log = logging.getLogger(LOGGER_NAME)


@dataclass(slots=True)
class AuditRecord:
    """One audited event. `kind`: `tool_call` or `config_change`."""

    kind: str
    at: float  # epoch seconds
    transport: str = ""  # rest | mcp | admin | api | yaml | cli
    key_name: str = ""
    key_prefix: str = ""
    subject: str = ""  # a user name (admin) or a token's subject
    pool: str = ""
    tool: str = ""
    server: str = ""  # the server that answered (the last one tried)
    attempts: int = 0
    outcome: str = ""  # ok, tool_error, an error code (no_healthy_server, upstream_timeout, ...)
    status: int = 0  # HTTP status of the answer
    latency_ms: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    client_address: str = ""
    trace_id: str = ""
    session: str = ""  # a hash of the client's MCP session id
    arguments: Any = None  # only when the pool opts in; a string when cut at the size cap
    result: Any = None
    change: str = ""  # config_change: what changed
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat(timespec="milliseconds")
        return {k: v for k, v in data.items() if v not in ("", None, {})}


class AuditSink(Protocol):
    def payload_cap(self, pool: str) -> int:
        """How many bytes of arguments and result to keep for `pool` (0: none)."""
        ...

    @property
    def enabled(self) -> bool:
        """Whether the sink wants records at all now (the database: some pool opted in)."""
        ...

    def refresh(self) -> None:
        """Re-read its settings (called off the event loop, on config reloads)."""
        ...

    def accept(self, record: AuditRecord) -> None:
        """Take a record; never blocks, never raises."""
        ...

    def flush(self) -> int:
        """Write what it holds now (off the event loop); returns how many records."""
        ...


class Audit:
    """The process's audit trail: the JSON log stream and the registered sinks."""

    def __init__(self) -> None:
        self.log_enabled = False
        self.sinks: list[AuditSink] = []

    @property
    def active(self) -> bool:
        return self.log_enabled or any(sink.enabled for sink in self.sinks)

    def register(self, sink: AuditSink) -> None:
        if sink not in self.sinks:
            self.sinks.append(sink)

    def refresh(self) -> None:
        for sink in self.sinks:
            try:
                sink.refresh()
            except Exception:  # the database away: keep the settings it had
                logging.getLogger(__name__).warning("audit sink refresh failed", exc_info=True)

    def payload_cap(self, pool: str) -> int:
        return max((sink.payload_cap(pool) for sink in self.sinks), default=0)

    def flush(self) -> None:
        for sink in self.sinks:
            try:
                sink.flush()
            except Exception:
                logging.getLogger(__name__).warning("audit sink flush failed", exc_info=True)

    def emit(self, record: AuditRecord) -> None:
        if self.log_enabled:
            log.info("%s", record.kind, extra={"audit": record.as_dict()})
        for sink in self.sinks:
            try:
                sink.accept(record)
            except Exception:  # an audit sink must never fail a call
                logging.getLogger(__name__).exception("audit sink failed")


trail = Audit()


def cap_payload(value: Any, cap: int) -> Any:
    """`value` as it is when its JSON fits in `cap` bytes, else its JSON cut to `cap` bytes (a
    string, so nobody mistakes it for the whole thing)."""
    if cap <= 0 or value is None:
        return None
    raw = orjson.dumps(value)
    if len(raw) <= cap:
        return value
    return raw[:cap].decode("utf-8", "ignore") + "…[truncated]"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: the record's `audit` fields (or the message), plus `logger` and
    `level` — for the operator's log pipeline (Vector, Fluent Bit, Loki, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = getattr(record, "audit", None) or {
            "at": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "message": record.getMessage(),
        }
        out = {**data, "logger": record.name, "level": record.levelname}
        return orjson.dumps(out, default=str).decode()
