"""Config changes in the audit trail: who changed what, from where.

Every write to the config goes through `servers.services.config_change`, which sends
`servers.events.config_committed` once its transaction has committed. Who made it comes from
the request being served (`actor_middleware`): an admin user, or the API key of a REST call. A
change made with no request around it came from the command line (`mcppool apply` of a YAML
file, `manage.py` commands), and is put down to the operating-system user running it.
"""

from __future__ import annotations

import contextvars
import getpass
import logging
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

from audit.writer import entry_of
from balancing.audit import AuditRecord, trail
from servers import events
from servers.models import ApiKey
from servers.services import parse_api_key

log = logging.getLogger(__name__)

_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "mcppool_audit_request", default=None
)


@sync_and_async_middleware
def actor_middleware(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """Remembers the request being served, so a config change it makes knows who made it."""
    if iscoroutinefunction(get_response):

        async def remember_async(request: HttpRequest) -> HttpResponse:
            token = _request.set(request)
            try:
                response: HttpResponse = await get_response(request)
                return response
            finally:
                _request.reset(token)

        return remember_async

    def remember(request: HttpRequest) -> HttpResponse:
        token = _request.set(request)
        try:
            response: HttpResponse = get_response(request)
            return response
        finally:
            _request.reset(token)

    return remember


def actor() -> AuditRecord:
    """An unsaved config-change record saying who is acting (transport, subject or key)."""
    record = AuditRecord(kind="config_change", at=time.time())
    request = _request.get()
    if request is None:
        record.transport = "cli"
        record.subject = _os_user()
        return record
    meta = request.META
    record.client_address = str(meta.get("REMOTE_ADDR", ""))
    secret = str(meta.get("HTTP_AUTHORIZATION", "")).partition(" ")[2].strip()
    prefix = parse_api_key(secret) if secret else None
    if request.path.startswith("/api/") and prefix is not None:
        record.transport = "api"
        record.key_prefix = prefix
        record.key_name = (
            ApiKey.objects.filter(prefix=prefix).values_list("name", flat=True).first() or ""
        )
        return record
    record.transport = "admin" if request.path.startswith("/admin/") else "web"
    user = getattr(request, "user", None)
    record.subject = user.get_username() if user is not None and user.is_authenticated else ""
    return record


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name for this uid (a container): say so rather than fail
        return "unknown"


def record_change(sender: Any = None, *, version: int, reason: str, **_: Any) -> None:
    """A config change committed: one row and one JSON line. Never raises (the change stands)."""
    try:
        record = actor()
        record.change = reason
        record.extra = {"version": version}
        trail.emit(record)
        entry_of(record).save()
    except Exception:
        log.exception("could not audit config change %r", reason)


def connect() -> None:
    events.config_committed.connect(record_change, dispatch_uid="mcppool-audit-config-change")
