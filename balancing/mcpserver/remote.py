"""A request for a session whose stdio server runs in another web process: served there.

A stdio server is a child of the web process that spawned it (the session's owner, named in the
sealed session id by its channel). A request for that session landing on another process is
sent whole to the owner over the channel layer (Redis) — the request's scope and body — and the
owner runs it through the endpoint as if it had arrived there, sending back each ASGI message of
its answer (a JSON answer, or an SSE stream with the call's progress, logging and relayed
requests), which this process writes to the client as they come. The client's answers to relayed
requests find the owner by their gateway id (`crossing`). A client that goes away is told to the
owner, which cancels the call as for a local client.

The owner beats every `BEAT` seconds while it works, so a silence of `SILENCE` seconds means it
is gone: before the answer began, the client gets the spec's 404
and initializes again; during it, the answer ends there (the call fails, nothing hangs). Without
Redis the id names no channel and other processes answer 404 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import MutableMapping
from typing import Any, Final

from balancing import host as host_module
from balancing.api.http import Receive, Scope, Send, disconnected
from balancing.errors_http import ApiError
from balancing.host import CHANNEL_PREFIX, EXCHANGE, EXCHANGE_REPLY, get_host

BEAT: Final = 2.0
SILENCE: Final = 10.0
# The parts of an HTTP scope the owner needs to serve the request as if it came in there.
_SCOPE_KEYS: Final = ("type", "http_version", "method", "scheme", "path", "raw_path",
                      "query_string", "root_path", "headers", "client", "server")  # fmt: skip


class OwnedElsewhere(Exception):
    """The request is served by the web process on `channel` (the session's stdio server runs
    there, or the era bridge holds the call it continues); `gone`: the answer when that process
    cannot be reached (default: the session is gone)."""

    def __init__(self, channel: str, gone: ApiError | None = None) -> None:
        super().__init__(channel)
        self.channel = channel
        self.gone = gone


def reachable(owner: str) -> bool:
    """Whether a session's owner is a channel this process can send the request to."""
    return owner.startswith(CHANNEL_PREFIX) and bool(get_host().channel)


async def forward(
    channel: str,
    scope: Scope,
    body: bytes,
    receive: Receive,
    send: Send,
    gone: ApiError | None = None,
) -> None:
    """Have the owner on `channel` serve this request; write its answer to the client. Raises
    `gone` (default: the session is gone) when the owner does not answer."""
    host = get_host()
    exchange = uuid.uuid4().hex
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    host.exchanges[exchange] = replies.put_nowait
    portable = {key: scope[key] for key in _SCOPE_KEYS if key in scope}
    request = {"type": EXCHANGE, "id": exchange, "reply": host.channel, "scope": portable,
               "body": body}  # fmt: skip
    watcher = asyncio.ensure_future(disconnected(receive))
    started = False
    try:
        if not await host.send_to(channel, request):
            raise gone or _gone()
        while True:
            getter = asyncio.ensure_future(replies.get())
            done, _ = await asyncio.wait({getter, watcher}, timeout=SILENCE,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if getter not in done:
                getter.cancel()
                if watcher in done:  # the client left: the owner cancels its call
                    await host.send_to(channel, {"type": EXCHANGE_REPLY, "id": exchange})
                    return
                if not started:
                    raise gone or _gone()
                # The owner went away mid-answer: end it here (the call fails; nothing hangs).
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            messages = getter.result().get("asgi")
            if not isinstance(messages, list):
                continue  # the owner's heartbeat
            started = True
            for asgi in messages:
                await send(asgi)
            last = messages[-1] if messages else {}
            if last.get("type") == "http.response.body" and not last.get("more_body"):
                return
    finally:
        watcher.cancel()
        host.exchanges.pop(exchange, None)


def _gone() -> ApiError:
    return ApiError(
        "unknown_session",
        "Session not found: the web process running its stdio server is gone; initialize again",
    )


async def serve(message: dict[str, Any]) -> None:
    """The owner's side: run the forwarded request through the endpoint, answer by channel."""
    from balancing.mcpserver.endpoint import handle  # the endpoint imports this module

    host = get_host()
    exchange, reply = str(message.get("id")), str(message.get("reply"))
    scope = dict(message.get("scope") or {})
    scope["headers"] = [(bytes(k), bytes(v)) for k, v in scope.get("headers") or []]
    body = bytes(message.get("body") or b"")
    client_gone = asyncio.Event()
    host.exchanges[exchange] = lambda _: client_gone.set()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await client_gone.wait()
        return {"type": "http.disconnect"}

    held: list[dict[str, Any]] = []

    async def send(asgi: MutableMapping[str, Any]) -> None:
        # The answer's start travels with its first body part: one Redis message for a JSON
        # answer, not two.
        held.append(dict(asgi))
        if asgi["type"] != "http.response.start":
            await host.send_to(reply, {"type": EXCHANGE_REPLY, "id": exchange, "asgi": held[:]})
            held.clear()

    async def beat() -> None:
        while True:
            await asyncio.sleep(BEAT)
            await host.send_to(reply, {"type": EXCHANGE_REPLY, "id": exchange})

    beating = asyncio.ensure_future(beat())
    try:
        await handle(scope, receive, send)
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        host.exchanges.pop(exchange, None)


host_module.exchange_handler = serve
