"""ASGI entry point: Channels routes HTTP and WebSocket; the gateway router fronts Django."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcppool.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from balancing.asgi_router import GatewayRouter  # noqa: E402
from balancing.host import LifespanApp  # noqa: E402
from monitoring.routing import websocket_urlpatterns  # noqa: E402  (dashboard live updates)

application = LifespanApp(
    ProtocolTypeRouter(
        {
            # The hot path (MCP endpoint, REST tool calls) is served before Django.
            "http": GatewayRouter(django_asgi_app),
            "websocket": AllowedHostsOriginValidator(
                # the stubs want channels' own pattern type; Django's path() is what it takes
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns))  # type: ignore[arg-type]
            ),
        }
    )
)
