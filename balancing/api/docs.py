"""Swagger UI from the assets django-ninja ships, served by this app.

Ninja's own docs page loads its assets through `{% static %}` only when `ninja` is an installed
app, and from a CDN otherwise; the machines running mcppool may have no internet and no static
file server, so the page and its three assets come from here.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import ninja
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.html import escape
from ninja.openapi.docs import DocsBase

if TYPE_CHECKING:
    from ninja import NinjaAPI

ASSETS_DIR: Final = Path(ninja.__file__).parent / "static" / "ninja"
ASSETS: Final = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-init.js": "text/javascript",
}

_PAGE: Final = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="{assets}swagger-ui.css">
</head>
<body>
  <script type="application/json" id="swagger-settings">{settings}</script>
  <div id="swagger-ui"></div>
  <script src="{assets}swagger-ui-bundle.js"></script>
  <script src="{assets}swagger-ui-init.js"></script>
</body>
</html>
"""


class LocalSwagger(DocsBase):
    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:
        settings = {"url": self.get_openapi_url(api, kwargs), "layout": "BaseLayout"}
        page = _PAGE.format(
            title=escape(api.title),
            assets=request.path.rstrip("/") + "/assets/",
            settings=json.dumps(settings).replace("<", "\\u003c"),
        )
        return HttpResponse(page)


@lru_cache(maxsize=len(ASSETS))
def _asset_bytes(name: str) -> bytes:
    return (ASSETS_DIR / name).read_bytes()


def asset(request: HttpRequest, name: str) -> HttpResponse:
    """One of the Swagger UI files (a fixed list: no path from the request reaches the disk).
    Kept in memory once read: a file iterator would be consumed synchronously under ASGI."""
    content_type = ASSETS.get(name)
    if content_type is None:
        raise Http404(name)
    response = HttpResponse(_asset_bytes(name), content_type=content_type)
    response["Cache-Control"] = "public, max-age=86400"
    return response
