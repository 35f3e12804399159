"""The dashboard's WebSocket: staff only; one group per page; numbers pushed by `live.Publisher`."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from monitoring import live

FORBIDDEN = 4403  # application close code: not signed in as staff


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    """`/ws/dashboard/` (overview) and `/ws/dashboard/pool/<slug>/` (one pool, its servers)."""

    group = ""
    subscribed = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not (user.is_active and user.is_staff):
            await self.close(code=FORBIDDEN)
            return
        self.group = live.group_name(self.scope["url_route"]["kwargs"].get("slug"))
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        publisher = live.subscribe()
        self.subscribed = True
        latest = publisher.latest(self.group)
        if latest is not None:  # fill the page now rather than at the next tick
            await self.send_json(latest)

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.subscribed:
            self.subscribed = False
            await live.unsubscribe()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Pages only listen."""

    async def dashboard_update(self, event: dict[str, Any]) -> None:
        await self.send_json(event["data"])
