"""Control events to every runtime, over the channel layer group `mcppool-control`.

Publishing never raises: a config write has committed by the time this runs, and a broker hiccup
must not turn a saved change into an error page. Runtimes also poll `ConfigState.version`, so a
lost event delays a change by at most the poll interval instead of losing it.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.dispatch import Signal

CONTROL_GROUP = "mcppool-control"
CONFIG_CHANGED = "config.changed"
HEALTH_CHANGED = "health.changed"
# One "check now" result, for the dashboard pages open on its pool (not sent for scheduled checks:
# at a thousand servers that would be hundreds of events a second nobody asked for).
HEALTH_CHECKED = "health.checked"

log = logging.getLogger(__name__)

# Sent after a config change committed, with `version` and `reason` (the audit trail listens).
config_committed = Signal()


def publish(event_type: str, **payload: Any) -> bool:
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        async_to_sync(layer.group_send)(CONTROL_GROUP, {"type": event_type, **payload})
    except Exception:  # the poll path still delivers the change
        log.warning("could not publish %s", event_type, exc_info=True)
        return False
    return True


def publish_config_changed(version: int, reason: str) -> bool:
    return publish(CONFIG_CHANGED, version=version, reason=reason)


def announce_committed(version: int, reason: str) -> None:
    config_committed.send(None, version=version, reason=reason)


def publish_health_changed(server_id: int, health: str, reason: str, *, at: float) -> bool:
    """One server's health flipped (`at`: epoch seconds): runtimes apply it to that server alone,
    without reloading the config."""
    return publish(HEALTH_CHANGED, server_id=server_id, health=health, reason=reason, at=at)


def publish_health_checked(
    *, pool: str, server: str, ok: bool, error: str, latency_ms: float | None, at: str
) -> bool:
    return publish(
        HEALTH_CHECKED, pool=pool, server=server, ok=ok, error=error, latency_ms=latency_ms, at=at
    )
