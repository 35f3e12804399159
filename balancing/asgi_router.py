"""The HTTP front door: the hot path as bare ASGI, everything else to Django.

`/mcp/<pool>/` (the MCP endpoint) and `POST /api/v1/pools/<pool>/tools/<tool>/call` (the REST
tool call) are served here without Django's middleware and request objects; the design's cost
table puts a bare ASGI callable at ~0.08 ms per request against ~1 ms for a Django view. Every
other HTTP request goes to Django, but its body is read here first, capped at
`MCPPOOL_MAX_BODY_BYTES` and within `MCPPOOL_BODY_TIMEOUT_SECONDS` (413 / 408), because Django's
ASGI handler reads the whole body before any view can refuse it, and uvicorn sets no deadline.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from balancing import observe
from balancing.api import call
from balancing.api.http import ClientGone, Message, Receive, Scope, Send, read_body, send_error
from balancing.errors_http import ApiError

MCP_PREFIX = "/mcp/"
API_PREFIX = "/api/"
WELL_KNOWN_RESOURCE = "/.well-known/oauth-protected-resource/"  # balancing.api.resource


class GatewayRouter:
    def __init__(self, django_app: Any) -> None:
        self.django_app = django_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(MCP_PREFIX):
                from balancing.mcpserver.endpoint import handle as handle_mcp

                if (obs := observe.observer()) is not None:  # traces or audit on
                    await observe.serve(obs, observe.MCP, handle_mcp, scope, receive, send)
                    return
                await handle_mcp(scope, receive, send)
                return
            if path.startswith(WELL_KNOWN_RESOURCE):
                from balancing.api import resource
                from balancing.api.access import started_host

                await resource.handle(scope, receive, send, await started_host())
                return
            if path.startswith(API_PREFIX):
                if (obs := observe.observer()) is not None and (target := call.match(path)):
                    await observe.serve_rest(obs, *target, scope, receive, send)
                    return
                if await call.run(scope, receive, send):
                    return
                await self._capped(scope, receive, send)
                return
            await self._capped(scope, receive, send)
            return
        await self.django_app(scope, receive, send)

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand Django a body already read within the size and time limits (413 / 408)."""
        try:
            body = await read_body(scope, receive, settings.MCPPOOL_MAX_BODY_BYTES)
        except ApiError as error:
            await send_error(send, error)
            return
        except ClientGone:
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.django_app(scope, replay, send)
