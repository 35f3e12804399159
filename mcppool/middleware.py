"""Requests that need the database while it is away get a clear 503, not a stack trace.

The hot path (REST tool calls, the MCP endpoint) never reaches Django and keeps serving on the
last config each runtime loaded; everything else (admin, dashboard, the rest of the API) needs the
database, and says so: an HTML page for people, the API's JSON error for programs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

from balancing.errors_http import ApiError

log = logging.getLogger(__name__)

RETRY_AFTER: Final = "5"
MESSAGE: Final = "Database unavailable — tool calls keep flowing on the last known config"


class DatabaseUnavailableMiddleware:
    """Answer `OperationalError` / `InterfaceError` raised by a view with a 503."""

    sync_capable = True
    async_capable = True

    def __init__(
        self, get_response: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]
    ) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        log.warning("database unavailable for %s %s: %s", request.method, request.path, exception)
        if request.path.startswith("/api/"):
            error = ApiError("database_unavailable", f"{MESSAGE}; try again shortly")
            response = HttpResponse(error.body(), status=503, content_type="application/json")
        else:
            # No request context: its processors (user, messages) would ask the database again.
            page = render_to_string("database_unavailable.html", {"message": MESSAGE})
            response = HttpResponse(page, status=503)
        response["Retry-After"] = RETRY_AFTER
        return response
