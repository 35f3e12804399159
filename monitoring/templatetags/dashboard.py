"""Number formats of the dashboard pages; `monitoring/static/monitoring/dashboard.js` mirrors
them so a live update looks exactly like the first render."""

from __future__ import annotations

import shlex
from typing import Any

from django import template

from servers.models import Server

register = template.Library()
NONE = "—"


@register.filter
def ms(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.1f} ms"


@register.filter
def pct(value: float | None) -> str:
    return NONE if value is None else f"{value * 100:.1f} %"


@register.filter
def rate(value: float | None) -> str:
    return NONE if value is None else f"{value:.1f}"


@register.filter
def panicking(pools: list[Any]) -> bool:
    """Is any of these pools in panic (the overview's banner)?"""
    return any(getattr(p, "panic", False) for p in pools)


@register.filter
def target(server: Server) -> str:
    """Where a server is: its URL, or the whole command line of a stdio server."""
    return server.url or shlex.join([server.command, *server.args])
