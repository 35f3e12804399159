"""WebSocket routes of the dashboard (mounted by `mcppool.asgi`)."""

from __future__ import annotations

from django.urls import path

from monitoring.consumers import DashboardConsumer

# Django's path() takes an ASGI app here (Channels' URLRouter reads it); its stubs want a view.
websocket_urlpatterns = [
    path("ws/dashboard/", DashboardConsumer.as_asgi()),  # type: ignore[arg-type]
    path("ws/dashboard/pool/<slug:slug>/", DashboardConsumer.as_asgi()),  # type: ignore[arg-type]
]
