"""Change notifications for `subscriptions/listen` streams (2026-07-28): one feed per server.

On the 2026-07-28 wire a client opts in to a server's change notifications (tools, prompts and
resources list changed; a resource updated) with a `subscriptions/listen` request whose answer *is*
the stream: acknowledged first, then every event it asked for, until either side ends it. There is
no replay: a stream that drops tells the client to listen again and refetch.

The gateway serves it for a pool: a client's stream (a `Listener`) gets the events of every
available server of the pool, each from that server's `Feed` — one upstream subscription per server
in this web process, shared by all of the process's listeners on it (as the SDK's subscription bus
is), opened with the first listener and closed after the last:

* a 2026 server: the feed holds an upstream `subscriptions/listen` of its own, asking for the three
  list-changed kinds and the union of the URIs its listeners want. A listener wanting a URI the
  upstream stream does not carry yet gets a new upstream stream with the larger union, acknowledged
  before the old one is let go (an event in between may come twice; events are level triggers).
* a handshake-era server: the feed holds a session of its own that receives the server's
  session-level messages (its GET stream over HTTP, stdout over stdio): list-changed notifications,
  and `notifications/resources/updated` for the URIs it `resources/subscribe`d — each URI with its
  first listener, unsubscribed after its last.

A feed whose upstream ends (stream closed, session gone) ends its listeners as lost, so each client
listens again. A feed the config ends (server removed, disabled, moved) lets its listeners go on
without it: the pool's lists changed, which the runtime tells them (`Runtime._pool_changed`).
The listen stream is one HTTP request, served whole by the web process it reached, so any process
serves any listen: nothing about it has to cross to another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from balancing.engine.config import Era, ServerConfig
from balancing.engine.errors import CallRejected, UpstreamError
from balancing.engine.jsonrpc import JsonObject
from balancing.engine.upstream import MessageHandler, UpstreamSession

logger = logging.getLogger(__name__)

SUBSCRIPTION_ID_META_KEY: Final = "io.modelcontextprotocol/subscriptionId"
ACKNOWLEDGED: Final = "notifications/subscriptions/acknowledged"
RESOURCE_UPDATED: Final = "notifications/resources/updated"
# Filter flag of each list-changed notification (the spec's `SubscriptionFilter`).
LIST_CHANGED: Final = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}
# Events waiting for a client that stopped reading: past this the stream ends (as the SDK's
# server does), since an event that cannot be delivered is lost anyway.
MAX_BACKLOG: Final = 1024
METHOD_NOT_FOUND: Final = -32601
# An upstream listen has no deadline of its own: it lasts while anyone listens.
FOREVER: Final = 10 * 365 * 24 * 3600.0

Ending = Literal["graceful", "lost"]
Opener = Callable[[MessageHandler], Awaitable[UpstreamSession]]


class FeedClosed(UpstreamError):
    """The feed ended while a listener was joining it."""


class _Quiet(Exception):
    """The server announces no changes (it offers no change notifications, or refuses to be
    listened to): there is nothing to subscribe to."""


def announces(capabilities: JsonObject) -> bool:
    """Whether a server's capabilities offer a change notification of some kind: if not, a
    listener hears nothing from it, and no upstream subscription is kept for it."""
    for kind in ("tools", "prompts", "resources"):
        offered = capabilities.get(kind)
        if isinstance(offered, dict) and (offered.get("listChanged") or offered.get("subscribe")):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Interest:
    """What one listen stream asked for: list-changed kinds (filter flags) and resource URIs."""

    kinds: frozenset[str]
    uris: frozenset[str]

    @classmethod
    def of(cls, notifications: JsonObject) -> Interest:
        """From the request's `notifications` filter (already checked to be an object)."""
        kinds = frozenset(flag for flag in LIST_CHANGED.values() if notifications.get(flag) is True)
        uris = notifications.get("resourceSubscriptions")
        wanted = frozenset(u for u in uris if isinstance(u, str)) if isinstance(uris, list) else ()
        return cls(kinds, frozenset(wanted))

    def honored(self) -> JsonObject:
        """The acknowledged filter: everything requested is honored (whether an event ever fires
        depends on the servers, as a subscription to a URI nobody updates never fires)."""
        honored: JsonObject = {flag: True for flag in LIST_CHANGED.values() if flag in self.kinds}
        if self.uris:
            honored["resourceSubscriptions"] = sorted(self.uris)
        return honored

    def wants(self, message: JsonObject) -> bool:
        method = message.get("method")
        flag = LIST_CHANGED.get(method) if isinstance(method, str) else None
        if flag is not None:
            return flag in self.kinds
        if method == RESOURCE_UPDATED:
            params = message.get("params")
            return isinstance(params, dict) and params.get("uri") in self.uris
        return False


def event_of(message: JsonObject) -> JsonObject | None:
    """The event an upstream frame announces, without the upstream's own subscription id."""
    method = message.get("method")
    if method in LIST_CHANGED:
        return {"method": method}
    if method == RESOURCE_UPDATED:
        params = message.get("params")
        if isinstance(params, dict) and isinstance(params.get("uri"), str):
            return {"method": method, "params": {"uri": params["uri"]}}
    return None


class Listener:
    """One client's listen stream: what it wants and the events waiting for it.

    Events are level triggers ("this changed, fetch it again"), so one still waiting makes the
    same event again redundant: several servers announcing the same change at once (a new
    release rolled out to every replica) reach the client once, as the SDK's client would keep
    it anyway. An event the client has already been given is given again."""

    def __init__(self, pool: str, interest: Interest, backlog: int = MAX_BACKLOG) -> None:
        self.pool = pool
        self.interest = interest
        self.feeds: dict[int, Feed] = {}  # server id → the feed it gets that server's events from
        self.quiet: set[int] = set()  # servers that announce no changes: nothing to hear
        self.joining: set[int] = set()
        self.ended: Ending | None = None
        self._backlog = backlog
        self._queue: asyncio.Queue[JsonObject | None] = asyncio.Queue()
        self._waiting: set[str] = set()  # the events queued, by their key

    def offer(self, event: JsonObject) -> None:
        if self.ended is not None or not self.interest.wants(event):
            return
        key = _key(event)
        if key in self._waiting:
            return
        if self._queue.qsize() >= self._backlog:
            logger.warning("a listen stream on %s stopped reading; ending it", self.pool)
            self.end("lost")
            return
        self._waiting.add(key)
        self._queue.put_nowait(event)

    def end(self, how: Ending) -> None:
        """Stop the stream (idempotent): `graceful` after what is queued, `lost` at once."""
        if self.ended is not None:
            return
        self.ended = how
        for feed in list(self.feeds.values()):
            feed.remove(self)
        self.feeds.clear()
        if how == "lost":
            while not self._queue.empty():
                self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def next(self) -> JsonObject | None:
        """The next event; None once the stream ended (`ended` says how)."""
        event = await self._queue.get()
        if event is not None:
            self._waiting.discard(_key(event))
        return event


def _key(event: JsonObject) -> str:
    params = event.get("params")
    uri = params.get("uri") if isinstance(params, dict) else None
    return f"{event.get('method')} {uri}" if uri is not None else str(event.get("method"))


class Feed:
    """One server's change notifications in this process, for every listener of it."""

    def __init__(self, server: ServerConfig, opener: Opener, timeout: float) -> None:
        self.server = server
        self._opener = opener
        self._timeout = timeout  # for opening and for each subscribe / re-listen
        self._listeners: set[Listener] = set()
        self._uris: Counter[str] = Counter()  # listeners per URI
        self._subscribed: set[str] = set()  # handshake era: URIs subscribed upstream
        self._stream_uris: frozenset[str] | None = None  # 2026: URIs of the upstream stream
        self._stream: asyncio.Task[None] | None = None
        self._acked: asyncio.Future[None] | None = None
        self._session: UpstreamSession | None = None
        self._lock = asyncio.Lock()
        self._tidy: asyncio.Task[None] | None = None
        self._shrinking = False
        self.closed = False

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @property
    def _modern(self) -> bool:
        return self._session is not None and self._session.era is Era.MODERN

    async def add(self, listener: Listener) -> None:
        """Join `listener`: its events flow once this returns (the upstream subscription for its
        URIs is in place). A server that announces no changes is noted in `listener.quiet` (and
        the feed ends). Raises `UpstreamError` when the server cannot be subscribed."""
        async with self._lock:
            if self.closed:
                raise FeedClosed("the feed ended", server=self.server.name)
            if self._session is None:
                self._session = await self._opener(self._on_message)
            for uri in listener.interest.uris:
                self._uris[uri] += 1
            self._listeners.add(listener)
            try:
                if not announces(self._session.server_capabilities):
                    raise _Quiet
                await self._cover()
            except _Quiet:
                self._drop(listener)
                listener.quiet.add(self.server.id)
                if not self._listeners:
                    self.closed = True
                    await self._stop()
                return
            except BaseException:
                self.remove(listener)  # (the feed closes if nobody else listens)
                raise
            if listener.ended is not None:  # it ended while joining
                self.remove(listener)
                return
            listener.feeds[self.server.id] = self

    def remove(self, listener: Listener) -> None:
        """A listener leaves; the upstream subscription shrinks (or closes) in the background."""
        if listener not in self._listeners:
            return
        self._drop(listener)
        self._shrinking = True
        if self._tidy is None or self._tidy.done():
            self._tidy = asyncio.ensure_future(self._shrink())

    def _drop(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.discard(listener)
            for uri in listener.interest.uris:
                self._uris[uri] -= 1
                if self._uris[uri] <= 0:
                    del self._uris[uri]

    def check(self) -> None:
        """The runtime's upkeep: a feed whose session died ends its listeners (they re-listen)."""
        if self._session is not None and not self._session.alive and not self.closed:
            self._fail("lost")

    async def close(self) -> None:
        """The config ended the feed: its listeners go on without this server."""
        self.closed = True
        for listener in list(self._listeners):
            listener.feeds.pop(self.server.id, None)
        self._listeners.clear()
        await self._stop()

    # ---- keeping the upstream subscription as wide as the listeners' interest ----------

    async def _cover(self) -> None:
        if self._modern:
            wanted = frozenset(self._uris)
            if self._stream is None or self._stream_uris is None or wanted - self._stream_uris:
                await self._relisten(wanted)
            return
        session = self._session
        assert session is not None  # noqa: S101  # opened by add()
        for uri in [u for u in self._uris if u not in self._subscribed]:
            await self._subscribe(session, "resources/subscribe", uri)
            self._subscribed.add(uri)

    async def _subscribe(self, session: UpstreamSession, method: str, uri: str) -> None:
        if not session.server_capabilities.get("resources", {}).get("subscribe"):
            return  # the server has no subscriptions: it never updates a resource to anyone
        try:
            await session.request(method, {"uri": uri}, timeout=self._timeout)
        except CallRejected as exc:
            # A resource the server does not know (or will not let us watch) never fires.
            logger.info("%s: %s %s refused: %s", self.server.name, method, uri, exc)

    async def _relisten(self, uris: frozenset[str]) -> None:
        """Open an upstream listen for `uris` (and every list-changed kind); once it is
        acknowledged, let the previous one go."""
        session = self._session
        assert session is not None  # noqa: S101  # opened by add()
        notifications: JsonObject = {flag: True for flag in LIST_CHANGED.values()}
        if uris:
            notifications["resourceSubscriptions"] = sorted(uris)
        acked = asyncio.get_running_loop().create_future()
        self._acked = acked
        task = asyncio.ensure_future(self._listen(session, {"notifications": notifications}, acked))
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.wait((acked, task), return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            task.cancel()
            raise UpstreamError(
                "subscriptions/listen was not acknowledged in time", server=self.server.name
            ) from None
        if not acked.done():
            task.cancel()
            exc = task.exception() if task.done() and not task.cancelled() else None
            if isinstance(exc, CallRejected) and exc.error.get("code") == METHOD_NOT_FOUND:
                raise _Quiet  # it offers change notifications, but not through listen streams
            if isinstance(exc, UpstreamError):
                raise exc
            raise UpstreamError(
                "subscriptions/listen ended unacknowledged", server=self.server.name
            )
        old, self._stream, self._stream_uris = self._stream, task, uris
        if old is not None:
            old.cancel()

    async def _listen(
        self, session: UpstreamSession, params: JsonObject, acked: asyncio.Future[None]
    ) -> None:
        """One upstream listen stream; when it ends on its own, the feed's listeners are lost.
        Refused before its acknowledgement, it raises (for `_relisten` to say why)."""
        me = asyncio.current_task()
        how: Ending = "lost"
        try:
            await session.request(
                "subscriptions/listen", params, timeout=FOREVER, on_message=self._on_message
            )
            how = "graceful"
        except UpstreamError as exc:
            if not acked.done():
                raise
            logger.info("%s: the upstream listen stream ended: %s", self.server.name, exc)
        if self._stream is me and not self.closed:
            self._fail(how)

    async def _shrink(self) -> None:
        while self._shrinking:  # a listener that left while the last round ran: once more
            self._shrinking = False
            await self._shrink_once()

    async def _shrink_once(self) -> None:
        async with self._lock:
            if self.closed:
                return
            session = self._session
            if not self._modern and session is not None:
                # given up before the session ends too: a server may keep subscriptions of a
                # session it was not told has ended (a stdio one never is)
                # (listeners may leave meanwhile: until none is left to give up)
                while stale := [u for u in self._subscribed if u not in self._uris]:
                    for uri in stale:
                        self._subscribed.discard(uri)
                        with contextlib.suppress(UpstreamError):
                            await self._subscribe(session, "resources/unsubscribe", uri)
            if not self._listeners:
                self.closed = True  # the runtime opens a new feed for the next listener
                await self._stop()

    def _fail(self, how: Ending) -> None:
        self.closed = True
        listeners, self._listeners = list(self._listeners), set()
        for listener in listeners:
            listener.feeds.pop(self.server.id, None)
            listener.end(how)
        task = asyncio.ensure_future(self._stop())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _stop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and stream is not asyncio.current_task():
            stream.cancel()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # ---- receive path --------------------------------------------------------------------

    async def _on_message(self, message: JsonObject) -> Any:
        """A frame of the upstream listen stream, or a session-level message (handshake era;
        over stdio the 2026 stream's frames arrive here too). Requests get no answer of ours."""
        if "id" in message:
            return None
        method = message.get("method")
        if method == ACKNOWLEDGED:
            if self._acked is not None and not self._acked.done():
                self._acked.set_result(None)
            return None
        event = event_of(message)
        if event is not None:
            for listener in list(self._listeners):
                listener.offer(event)
        return None
