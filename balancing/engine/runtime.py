"""The runtime: live pools of upstream sessions, and the call path through them.

One `Runtime` lives in each ASGI process. It is handed config `Snapshot`s (at start and on every
change) and applies them as a diff, without dropping calls in flight: a new server opens its
sessions, a removed or disabled one closes once its calls have finished, a draining one takes no
new calls, and a changed weight or limit applies to the next pick.

A call: match affinity rules → the balancer picks a server → borrow a call slot on one of its
sessions → forward the JSON-RPC request → account the outcome (stats, passive health, metrics).
A call that never reached a server is retried once on a fresh session of the same server
(a 404 "session not found" re-initializes transparently) and, if the pool's retry policy
allows, on each other server in turn until one takes it (in panic the balancer picks dead servers
too); a 503 then names every server tried and why. A delivered call to a tool annotated read-only
or idempotent is retried once on another server, within the retry budget.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import aiohttp

from balancing.engine.affinity import RequestContext, match_rules
from balancing.engine.balancer import Balancer, Pick
from balancing.engine.cache import NO_HINTS, Hints, ResultCache, hints_of, strictest
from balancing.engine.config import (
    AdminState,
    Era,
    Health,
    PoolConfig,
    ServerConfig,
    Snapshot,
    Transport,
)
from balancing.engine.endpoint import Endpoint
from balancing.engine.errors import (
    CallRejected,
    ProtocolError,
    SessionGone,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
)
from balancing.engine.feeds import LIST_CHANGED, Feed, FeedClosed, Interest, Listener
from balancing.engine.metrics import RuntimeMetrics
from balancing.engine.outlier import Ejected, Outcome, OutlierDetector, OutlierEvent, Recovered
from balancing.engine.policy import UpstreamPolicy
from balancing.engine.request_state import InvalidState, Opened, StateSealer
from balancing.engine.retry import RetryBudget, may_retry
from balancing.engine.sessions import AcquireTimeout, PoolClosed, Session, SessionPool
from balancing.engine.stats import ServerStats
from balancing.engine.transport_http import client_session
from balancing.engine.upstream import UpstreamSession

if TYPE_CHECKING:
    from balancing.engine.tracing import Attempt, Observer

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
MessageHandler = Callable[[JsonObject], Awaitable[JsonObject | None]]
# The caller's headers for the server a call goes to, by server id (`balancing.identity`).
HeadersFor = Callable[[int], Mapping[str, str] | None]
EventSink = Callable[[str, ServerConfig, OutlierEvent], None]

CLIENT_INFO: JsonObject = {"name": "mcppool", "version": "0.1.0"}
# The gateway multiplexes many clients over one upstream session in shared mode, so it declares no
# sampling or elicitation there: a server must not send a request that no single client owns.
SHARED_CAPABILITIES: JsonObject = {}
TOOLS_REFRESH_SECONDS = 60.0
# A server whose feed could not be joined (listen streams) is tried again after this long.
FEED_RETRY_SECONDS = 5.0
MAINTAIN_SECONDS = 1.0


def local_command(server: ServerConfig) -> ServerConfig:
    """`python` in a config file means the interpreter running mcppool, so an example file works
    in any virtualenv (the health checks spawn stdio servers the same way)."""
    if server.transport is Transport.STDIO and server.command in ("python", "python3"):
        return replace(server, command=sys.executable)
    return server


def start_timeout(pool: PoolConfig, server: ServerConfig) -> float:
    """How long opening a session may take: a stdio server gets the pool's `start_timeout`
    (spawning an interpreter on a loaded machine has taken 19 s), an HTTP one 10 s."""
    if server.transport is Transport.STDIO:
        return pool.start_timeout
    return max(pool.acquire_timeout, 10.0)


class UnknownPool(LookupError):
    def __init__(self, slug: str) -> None:
        super().__init__(f"no pool {slug!r}")
        self.slug = slug


class NoHealthyServer(UpstreamError):
    """No server of the pool can take the call (down, ejected, draining, or lacking the tool)."""

    delivered = False

    @property
    def server_failure(self) -> bool:
        return False


@dataclass(slots=True)
class LivePool:
    config: PoolConfig
    balancer: Balancer
    outliers: OutlierDetector
    budget: RetryBudget
    endpoints: dict[int, Endpoint]
    sessions: dict[int, SessionPool]
    tools: dict[str, JsonObject]  # merged tool definitions, first server listing a name wins
    server_tools: dict[int, list[JsonObject]]  # each server's own `tools/list`
    tools_refreshed: dict[int, float]
    # each server's capabilities and protocol era as its latest session negotiated them
    capabilities: dict[int, JsonObject] = field(default_factory=dict)
    eras: dict[int, Era] = field(default_factory=dict)
    # the strictest caching hints of the servers' `tools/list` answers (ttlMs, cacheScope)
    tools_hints: Hints = NO_HINTS
    server_hints: dict[int, Hints] = field(default_factory=dict)
    # 2026 `subscriptions/listen` streams on this pool (`engine/feeds.py`)
    listeners: set[Listener] = field(default_factory=set)

    def endpoint_list(self) -> list[Endpoint]:
        return list(self.endpoints.values())


def _outcome_of(exc: UpstreamError) -> Outcome:
    if isinstance(exc, UpstreamTimeout):
        return Outcome.TIMEOUT
    if isinstance(exc, CallRejected):
        return Outcome.INTERNAL_ERROR if exc.server_failure else Outcome.SUCCESS
    return Outcome.TRANSPORT_FAILURE if exc.server_failure else Outcome.SUCCESS


def _exhausted(slug: str, tried: list[UpstreamError]) -> UpstreamError:
    """What a call that failed on every server it could try answers: the one failure as it was,
    or, when none of several servers got the call, a 503 that names each of them and why."""
    delivered = [exc for exc in tried if exc.delivered]
    if delivered:
        return delivered[-1]
    if len(tried) == 1:
        return tried[0]
    reasons = "; ".join(str(exc) if exc.server else f"?: {exc}" for exc in tried)
    return NoHealthyServer(f"pool {slug!r}: no server could take the call (tried {reasons})")


def _label_of(exc: UpstreamError) -> str:
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, CallRejected | UpstreamRefused):
        return "rejected"
    if isinstance(exc, ProtocolError):
        return "protocol_error"
    if isinstance(exc, AcquireTimeout):
        return "acquire_timeout"
    if isinstance(exc, NoHealthyServer):
        return "no_server"
    return "transport_error"


def _restored(params: JsonObject, opened: Opened, server_id: int) -> JsonObject:
    """The retry's params with the upstream's own `requestState` back in place of ours."""
    if opened.server_id != server_id or opened.held is not None:
        raise InvalidState("sealed for another server, or for a call the gateway holds")
    params = {k: v for k, v in params.items() if k != "requestState"}
    if opened.state is not None:
        params["requestState"] = opened.state
    return params


def _claim_trial(endpoint: Endpoint, now: float) -> bool:
    """A call that must go to this server (no pick) is its half-open trial when one is due."""
    outlier = endpoint.outlier
    if outlier.half_open(now) and outlier.may_take(now):
        outlier.claim_trial(now)
        return True
    return False


class Runtime:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_outlier: EventSink | None = None,
        open_session: Callable[[PoolConfig, ServerConfig], Awaitable[Session]] | None = None,
        policy: UpstreamPolicy | None = None,
        sealer: StateSealer | None = None,
    ) -> None:
        self.clock = clock
        # The operator's command and outbound policy, enforced at spawn and at connect time.
        self.policy = policy
        # Seals an `input_required` result's `requestState` around the replica that issued it
        # (and opens the client's retry): without one, multi-round-trip requests are passed on
        # as they are and may land on a replica that cannot continue them.
        self.sealer = sealer
        self.results = ResultCache(clock)  # fresh list/read results, by their caching hints
        self.rng = rng or random.Random()
        self.metrics = RuntimeMetrics()
        self.pools: dict[str, LivePool] = {}
        self.version = -1
        self._on_outlier = on_outlier
        self._open_override = open_session
        self._http: aiohttp.ClientSession | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[Any]] = set()
        # Each server's change notifications for listen streams (server id → feed), and when a
        # server that could not be joined is tried again.
        self.feeds: dict[int, Feed] = {}
        self._join_again_at: dict[int, float] = {}
        self._started = False
        # Traces and the audit trail (`engine/tracing.py`); None when both are off.
        self.observer: Observer | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self, snapshot: Snapshot) -> None:
        # One keep-alive connector for every HTTP upstream: building a client per session costs
        # ~26 ms (SSL context) and loses connection reuse.
        self._http = client_session(self.policy.outbound if self.policy else None)
        self._started = True
        await self.apply(snapshot, initial=True)
        self._maintainer = asyncio.create_task(self._maintain_forever(), name="mcppool-maintain")

    async def close(self, grace: float = 10.0) -> None:
        """Stop taking calls; let calls in flight finish within `grace`; close every session."""
        if self._maintainer:
            self._maintainer.cancel()
            await asyncio.gather(self._maintainer, return_exceptions=True)
        for live in self.pools.values():
            for listener in list(live.listeners):
                listener.end("graceful")
        feeds, self.feeds = list(self.feeds.values()), {}
        pools = [sp for live in self.pools.values() for sp in live.sessions.values()]
        await asyncio.gather(
            *(sp.close(grace) for sp in pools),
            *(feed.close() for feed in feeds),
            return_exceptions=True,
        )
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        self.pools.clear()
        if self._http:
            await self._http.close()
            self._http = None
        self._started = False

    # ---- config ------------------------------------------------------------------------
    async def apply(self, snapshot: Snapshot, *, initial: bool = False) -> None:
        """Make the live pools match `snapshot` (a diff: nothing in flight is dropped)."""
        now = self.clock()
        wanted = {p.slug: p for p in snapshot.pools}
        for slug in list(self.pools):
            if slug not in wanted:
                live = self.pools.pop(slug)
                for sp in live.sessions.values():
                    self._retire(sp)
                for server_id in live.endpoints:
                    self._end_feed(server_id)
                for listener in list(live.listeners):
                    listener.end("graceful")  # the pool is gone: nothing to listen to
        for slug, config in wanted.items():
            existing = self.pools.get(slug)
            if existing is not None:
                live = existing
            else:
                live = LivePool(
                    config=config,
                    balancer=Balancer(config, self.rng),
                    outliers=OutlierDetector.for_pool(config, self.rng),
                    budget=RetryBudget(config.retry_budget_percent, config.retry_budget_min),
                    endpoints={},
                    sessions={},
                    tools={},
                    server_tools={},
                    tools_refreshed={},
                )
                self.pools[slug] = live
            self._apply_pool(live, config, now, initial)
        self.version = snapshot.version

    def _apply_pool(self, live: LivePool, config: PoolConfig, now: float, initial: bool) -> None:
        if live.config != config:
            live.balancer.configure(config)
            live.outliers.configure(config)
            live.budget = RetryBudget(config.retry_budget_percent, config.retry_budget_min)
        live.config = config
        live.outliers.sync(config.servers)
        keep = {s.id: s for s in config.servers if s.state is not AdminState.DISABLED}
        serving = set(live.endpoints)
        moved = False
        for server_id in list(live.endpoints):
            old = live.endpoints[server_id].config
            if server_id not in keep or keep[server_id].place != old.place:
                moved = self._end_feed(server_id) or moved
            if server_id not in keep:
                live.endpoints.pop(server_id)
                live.tools_refreshed.pop(server_id, None)
                live.server_tools.pop(server_id, None)
                live.server_hints.pop(server_id, None)
                live.capabilities.pop(server_id, None)
                live.eras.pop(server_id, None)
                sp = live.sessions.pop(server_id, None)
                if sp is not None:
                    self._retire(sp)
        for server in keep.values():
            endpoint = live.endpoints.get(server.id)
            if endpoint is None:
                endpoint = Endpoint(
                    server,
                    ServerStats(config.ewma_decay, now=now),
                    live.outliers.state(server.id),
                    # Servers present at start take traffic at once; ones added later ramp up.
                    up_since=-float("inf") if initial else now,
                )
                live.endpoints[server.id] = endpoint
                live.sessions[server.id] = SessionPool(
                    config, server, self._opener(live, server.id), clock=self.clock, rng=self.rng
                )
                continue
            self._health_moved(live, endpoint, server, now)
            endpoint.config = server
            live.sessions[server.id].reconfigure(config, server)
        if live.listeners and (moved or set(live.endpoints) != serving):
            self._pool_changed(live)

    def _health_moved(
        self, live: LivePool, endpoint: Endpoint, server: ServerConfig, now: float
    ) -> None:
        old = endpoint.config
        if old.health in (Health.DOWN, Health.EJECTED) and server.health in (
            Health.UP,
            Health.RECOVERING,
        ):
            endpoint.up_since = now  # back from down: slow start
            endpoint.outlier.mark_probe_ok(now)
            # It may have come back as another build: re-read its tools on the next upkeep,
            # and reconnect now rather than after the reconnect backoff it built up while down.
            live.tools_refreshed.pop(server.id, None)
            live.sessions[server.id].reconnect_now()
        if server.health is Health.UP and old.health is not Health.UP:
            endpoint.outlier.mark_probe_ok(now)  # a passing active check un-ejects

    def apply_health(self, server_id: int, health: Health, changed_at: float) -> bool:
        """Apply one server's new health (a `health.changed` event) without reloading the config:
        a flip costs this server's update, not a diff of every pool. True when it changed here."""
        now = self.clock()
        for live in self.pools.values():
            endpoint = live.endpoints.get(server_id)
            if endpoint is None or endpoint.config.health is health:
                continue
            server = replace(endpoint.config, health=health, health_changed_at=changed_at)
            self._health_moved(live, endpoint, server, now)
            endpoint.config = server
            live.config = replace(
                live.config,
                servers=tuple(server if s.id == server_id else s for s in live.config.servers),
            )
            return True
        return False

    def _retire(self, sp: SessionPool) -> None:
        task = asyncio.ensure_future(sp.close(grace=sp.pool.call_timeout))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _opener(self, live: LivePool, server_id: int) -> Callable[[], Awaitable[Session]]:
        async def open_session() -> Session:
            server = live.endpoints[server_id].config
            if self._open_override is not None:
                return await self._open_override(live.config, server)
            session = await self.open_upstream(live.config, server)
            live.capabilities[server_id] = session.server_capabilities
            live.eras[server_id] = session.era
            return session

        return open_session

    async def open_upstream(
        self,
        pool: PoolConfig,
        server: ServerConfig,
        *,
        capabilities: JsonObject | None = None,
        on_event: MessageHandler | None = None,
        listen: bool = False,
        client_info: JsonObject | None = None,
        handshake_version: str | None = None,
    ) -> UpstreamSession:
        """Open and negotiate one upstream session (also used by sticky client sessions).

        ``listen``: hold the server's GET stream open for messages outside any call (HTTP,
        handshake era) — for a session with one owner; pooled sessions have nobody to tell.
        A sticky client's session speaks for that client: its ``client_info``, capabilities and
        ``handshake_version`` are the client's own."""
        return await UpstreamSession.open(
            local_command(server),
            http=self._http,
            client_info=client_info or CLIENT_INFO,
            capabilities=SHARED_CAPABILITIES if capabilities is None else capabilities,
            on_event=on_event,
            timeout=start_timeout(pool, server),
            listen=listen,
            commands=self.policy.commands if self.policy else None,
            handshake_version=handshake_version,
        )

    async def resume_upstream(
        self,
        server: ServerConfig,
        *,
        session_id: str,
        protocol_version: str,
        server_capabilities: JsonObject,
        client_info: JsonObject,
        capabilities: JsonObject,
        on_event: MessageHandler | None = None,
    ) -> UpstreamSession:
        """Speak on a sticky client's HTTP upstream session that another web process opened."""
        return await UpstreamSession.resume(
            server,
            http=self._http,
            session_id=session_id,
            protocol_version=protocol_version,
            server_capabilities=server_capabilities,
            client_info=client_info,
            capabilities=capabilities,
            on_event=on_event,
            clock=self.clock,
        )

    # ---- calls -------------------------------------------------------------------------
    def pool(self, slug: str) -> LivePool:
        live = self.pools.get(slug)
        if live is None:
            raise UnknownPool(slug)
        return live

    async def call_tool(
        self,
        slug: str,
        name: str,
        arguments: Mapping[str, Any] | None,
        *,
        ctx: RequestContext | None = None,
        timeout: float | None = None,
        on_message: MessageHandler | None = None,
        meta: Mapping[str, Any] | None = None,
        upstream_headers: HeadersFor | None = None,
    ) -> JsonObject:
        params: JsonObject = {"name": name, "arguments": dict(arguments or {})}
        if meta:
            params["_meta"] = dict(meta)
        return await self.request(
            slug,
            "tools/call",
            params,
            tool=name,
            ctx=ctx,
            timeout=timeout,
            on_message=on_message,
            upstream_headers=upstream_headers,
        )

    async def request(
        self,
        slug: str,
        method: str,
        params: JsonObject | None,
        *,
        tool: str | None = None,
        ctx: RequestContext | None = None,
        timeout: float | None = None,
        on_message: MessageHandler | None = None,
        headers: Mapping[str, str] | None = None,
        upstream_headers: HeadersFor | None = None,
    ) -> JsonObject:
        """Forward one JSON-RPC request through the pool; returns the upstream's `result`.
        ``headers``: the client's own headers to pass on (2026 HTTP upstreams);
        ``upstream_headers(server_id)``: the caller's identity headers for the server picked.

        The retry of a multi-round-trip request (its `requestState` sealed by this runtime) goes
        to the replica that asked for the input; a state not sealed here raises `InvalidState`.
        """
        live = self.pool(slug)
        if params is not None and "requestState" in params and self.sealer is not None:
            opened = self.sealer.open(slug, params["requestState"])
            return await self._continue(
                live, opened, method, params, timeout, on_message, headers, upstream_headers
            )
        config = live.config
        timeout = config.call_timeout if timeout is None else min(timeout, config.call_timeout)
        pin = hash_key = None
        if config.rules and ctx is not None:
            decision = match_rules(config.rules, ctx)
            if decision is not None:
                pin, hash_key = decision.pin, decision.hash_key
        exclude: set[int] = set()
        budgeted = False  # the retry holds a slot of the retry budget
        tried: list[UpstreamError] = []  # each server's failure, in order
        budget = live.budget
        budget.call_started()
        obs = self.observer
        try:
            while True:
                mark = obs.mark() if obs is not None else 0
                now = self.clock()
                pick = live.balancer.pick(
                    live.endpoint_list(),
                    now,
                    tool=tool,
                    exclude=exclude,
                    hash_key=hash_key,
                    pin=pin,
                )
                if obs is not None:
                    obs.picked(mark, config, pick, retry=bool(tried))
                if pick is None:
                    if tried:
                        # No other server to retry on: the failures say why, not "none".
                        raise _exhausted(slug, tried)
                    self.metrics.calls[(slug, "", "no_server")] += 1
                    raise NoHealthyServer(
                        f"pool {slug!r} has no healthy server"
                        + (f" offering tool {tool!r}" if tool else ""),
                    )
                if pick.panic:
                    self.metrics.panics[slug] += 1
                endpoint = pick.endpoint
                try:
                    return await self._send(
                        live,
                        endpoint,
                        method,
                        params,
                        timeout,
                        on_message,
                        trial=pick.trial,
                        headers=headers,
                        upstream_headers=upstream_headers,
                    )
                except UpstreamError as exc:
                    # A call that never left may go on to every other server (no upstream did
                    # any work for it: in panic, dead servers are picked too, and the call must
                    # reach a live one); one that may have run is retried once, in the budget.
                    if (exc.delivered and budgeted) or not self._should_retry(live, exc, tool):
                        raise
                    budgeted = budgeted or exc.delivered
                    tried.append(exc)
                    exclude.add(endpoint.id)
                    self.metrics.retries[slug] += 1
        finally:
            budget.call_finished()
            if budgeted:
                budget.retry_finished()

    async def _continue(
        self,
        live: LivePool,
        opened: Opened,
        method: str,
        params: JsonObject,
        timeout: float | None,
        on_message: MessageHandler | None,
        headers: Mapping[str, str] | None,
        upstream_headers: HeadersFor | None,
    ) -> JsonObject:
        """Only the replica that issued the state can continue it: no pick, no retry."""
        if opened.held is not None:
            raise InvalidState("a call the gateway holds is resumed by the MCP endpoint")
        endpoint = live.endpoints.get(opened.server_id)
        if endpoint is None:
            raise NoHealthyServer(
                f"pool {live.config.slug!r}: the server that asked for input left the pool"
            )
        params = _restored(params, opened, endpoint.id)
        timeout = (
            live.config.call_timeout if timeout is None else min(timeout, live.config.call_timeout)
        )
        trial = _claim_trial(endpoint, self.clock())
        return await self._send(
            live,
            endpoint,
            method,
            params,
            timeout,
            on_message,
            trial=trial,
            headers=headers,
            upstream_headers=upstream_headers,
        )

    def _should_retry(self, live: LivePool, exc: UpstreamError, tool: str | None) -> bool:
        annotations = live.tools.get(tool, {}).get("annotations") if tool else None
        if not may_retry(live.config.retry_policy, exc.delivered, annotations):
            return False
        if isinstance(exc, CallRejected | UpstreamRefused) and not exc.server_failure:
            return False  # the server answered; another would answer the same
        if not exc.delivered:
            # No upstream did any work for it, so sending it elsewhere adds no load: the budget,
            # which exists to stop retries from multiplying work, does not apply. This keeps a
            # killed replica from failing calls that never reached it.
            return True
        if not live.budget.try_retry():
            self.metrics.retries_refused[live.config.slug] += 1
            return False
        return True

    def _send(
        self,
        live: LivePool,
        endpoint: Endpoint,
        method: str,
        params: JsonObject | None,
        timeout: float,
        on_message: MessageHandler | None,
        *,
        trial: bool = False,
        headers: Mapping[str, str] | None = None,
        upstream_headers: HeadersFor | None = None,
    ) -> Awaitable[JsonObject]:
        """The call to `endpoint` on a pooled session, accounted: the caller awaits `_accounted`
        itself (no coroutine of its own here: every level of the await chain is passed through
        at each of the call's suspensions)."""
        sp = live.sessions[endpoint.id]
        started = self.clock()
        if upstream_headers is not None and (identity := upstream_headers(endpoint.id)):
            headers = {**(headers or {}), **identity}

        async def on_pooled_session(
            params: JsonObject | None, observed: Attempt | None
        ) -> JsonObject:
            for attempt in (1, 2):
                try:
                    async with sp.borrow() as session:
                        self.metrics.acquire_wait[live.config.slug].observe(self.clock() - started)
                        if observed is not None:
                            observed.session(session)
                        if headers:
                            return await session.request(
                                method, params, timeout=timeout, on_message=on_message,
                                headers=headers,
                            )  # fmt: skip
                        return await session.request(
                            method, params, timeout=timeout, on_message=on_message
                        )
                except (SessionGone, PoolClosed) as exc:
                    # Never delivered: the session was gone (404, process exited). Once, open a
                    # fresh session transparently and send again.
                    if attempt == 2 or isinstance(exc, PoolClosed):
                        raise
                    self.metrics.reinitialized[(live.config.slug, endpoint.config.name)] += 1
            raise AssertionError("unreachable")  # pragma: no cover

        return self._accounted(live, endpoint, trial, method, params, on_pooled_session)

    async def _accounted(
        self,
        live: LivePool,
        endpoint: Endpoint,
        trial: bool,
        method: str,
        params: JsonObject | None,
        send: Callable[[JsonObject | None, Attempt | None], Awaitable[JsonObject]],
    ) -> JsonObject:
        """Run one call to `endpoint` and account for it — stats, passive health, metrics — the
        same way whichever session carries it (pooled, or a sticky client's own)."""
        slug, server = live.config.slug, endpoint.config.name
        stats = endpoint.stats
        stats.begin()
        started = self.clock()
        outcome = Outcome.SUCCESS
        label = "ok"
        observed = None
        if self.observer is not None:
            observed = self.observer.attempt(live.config, endpoint.config, method, params)
            params = observed.params
        try:
            result = await send(params, observed)
            if result.get("isError") is True:
                outcome, label = Outcome.TOOL_ERROR, "tool_error"
            elif result.get("resultType") == "input_required" and self.sealer is not None:
                state = result.get("requestState")
                sealed = self.sealer.seal(
                    slug, endpoint.id, state if isinstance(state, str) else None
                )
                result = {**result, "requestState": sealed}
            return result
        except UpstreamError as exc:
            outcome, label = _outcome_of(exc), _label_of(exc)
            raise
        except asyncio.CancelledError:
            label = "cancelled"
            raise
        finally:
            now = self.clock()
            latency = now - started
            failed = outcome in (Outcome.TIMEOUT, Outcome.TRANSPORT_FAILURE, Outcome.INTERNAL_ERROR)
            stats.end(now, latency, failed)
            if label != "cancelled":
                event = endpoint.outlier.record(outcome, now)
                if event is not None:
                    self._report(live, endpoint, event)
            elif trial:
                endpoint.outlier.abandon_trial()  # a cancelled trial says nothing: next call tries
            self.metrics.calls[(slug, server, label)] += 1
            self.metrics.durations[(slug, server)].observe(latency)
            if observed is not None:
                observed.end(label)

    # ---- sessions bound to one client (sticky pools) -------------------------------------
    def pick_binding(self, slug: str, ctx: RequestContext | None = None) -> tuple[LivePool, Pick]:
        """Choose the server a new sticky client session binds to, as a call's pick would (rules,
        health, the half-open trial): the binding's opening settles a trial it claimed."""
        live = self.pool(slug)
        pin = hash_key = None
        if live.config.rules and ctx is not None:
            decision = match_rules(live.config.rules, ctx)
            if decision is not None:
                pin, hash_key = decision.pin, decision.hash_key
        pick = live.balancer.pick(live.endpoint_list(), self.clock(), hash_key=hash_key, pin=pin)
        if pick is None:
            self.metrics.calls[(slug, "", "no_server")] += 1
            raise NoHealthyServer(f"pool {slug!r} has no healthy server")
        if pick.panic:
            self.metrics.panics[slug] += 1
        return live, pick

    def settle_binding(self, live: LivePool, pick: Pick, error: UpstreamError | None) -> None:
        """Record the outcome of opening a sticky session on the picked server."""
        endpoint = pick.endpoint
        if error is not None and not error.server_failure:
            if pick.trial:
                endpoint.outlier.abandon_trial()  # says nothing about the server: next one tries
            return
        outcome = Outcome.SUCCESS if error is None else _outcome_of(error)
        event = endpoint.outlier.record(outcome, self.clock())
        if event is not None:
            self._report(live, endpoint, event)

    async def request_bound(
        self,
        slug: str,
        server_id: int,
        upstream: UpstreamSession,
        method: str,
        params: JsonObject | None,
        *,
        on_message: MessageHandler | None = None,
        headers: Mapping[str, str] | None = None,
        upstream_headers: HeadersFor | None = None,
        timeout: float | None = None,
    ) -> JsonObject:
        """Forward one request on a session bound to one client (sticky pools): no pick, no
        retry (the session's state lives on that server), the same accounting as any call.
        A multi-round-trip retry's sealed `requestState` is opened (it must name this server).
        ``timeout``: the pool's call timeout unless given (a call held for its client's answers
        waits on the client too)."""
        live = self.pool(slug)
        endpoint = live.endpoints.get(server_id)
        if endpoint is None:
            raise SessionGone("the session's server left the pool")
        if params is not None and "requestState" in params and self.sealer is not None:
            params = _restored(params, self.sealer.open(slug, params["requestState"]), server_id)
        if upstream_headers is not None and (identity := upstream_headers(server_id)):
            headers = {**(headers or {}), **identity}
        trial = _claim_trial(endpoint, self.clock())
        timeout = live.config.call_timeout if timeout is None else timeout

        def send(params: JsonObject | None, observed: Attempt | None) -> Awaitable[JsonObject]:
            if observed is not None:
                observed.session(upstream)
            return upstream.request(
                method, params, timeout=timeout, on_message=on_message, headers=headers
            )

        return await self._accounted(live, endpoint, trial, method, params, send)

    def _report(self, live: LivePool, endpoint: Endpoint, event: OutlierEvent) -> None:
        key = (live.config.slug, endpoint.config.name)
        if isinstance(event, Ejected):
            self.metrics.ejections[key] += 1
            log.warning("%s/%s ejected for %.0f s", *key, event.until - self.clock())
        elif isinstance(event, Recovered):
            self.metrics.recoveries[key] += 1
            endpoint.up_since = self.clock()  # ramp back in (slow start)
            log.info("%s/%s back in service", *key)
        if self._on_outlier is not None:
            try:
                self._on_outlier(live.config.slug, endpoint.config, event)
            except Exception:
                log.exception("reporting an outlier event failed")

    # ---- tools -------------------------------------------------------------------------
    async def list_tools(self, slug: str) -> list[JsonObject]:
        """The pool's tools, merged from its servers (refreshed now if never listed)."""
        live = self.pool(slug)
        if not live.tools_refreshed:
            await self._refresh_tools(live)
        return list(live.tools.values())

    async def _refresh_tools(self, live: LivePool) -> None:
        await asyncio.gather(
            *(self._refresh_server_tools(live, ep) for ep in live.endpoint_list()),
            return_exceptions=True,
        )
        merged: dict[str, JsonObject] = {}
        for server_id in live.endpoints:
            for tool in live.server_tools.get(server_id, ()):
                merged.setdefault(tool["name"], tool)
        live.tools = merged
        live.tools_hints = strictest(
            hints for server_id, hints in live.server_hints.items() if server_id in live.endpoints
        )

    async def _refresh_server_tools(self, live: LivePool, endpoint: Endpoint) -> None:
        sp = live.sessions.get(endpoint.id)
        if sp is None or not endpoint.available(self.clock()):
            return
        tools: list[JsonObject] = []
        pages: list[Hints] = []
        cursor: str | None = None
        async with sp.borrow() as session:
            for _ in range(100):  # pages; bounded against a server that never ends its cursor
                params = {"cursor": cursor} if cursor else None
                page = await session.request("tools/list", params, timeout=live.config.call_timeout)
                tools.extend(t for t in page.get("tools", []) if isinstance(t, dict))
                pages.append(hints_of(page))
                cursor = page.get("nextCursor")
                if not cursor:
                    break
        tools = [t for t in tools if isinstance(t.get("name"), str)]
        endpoint.tools = frozenset(t["name"] for t in tools)
        live.server_tools[endpoint.id] = tools
        live.server_hints[endpoint.id] = strictest(pages)
        live.tools_refreshed[endpoint.id] = self.clock()

    # ---- upkeep ------------------------------------------------------------------------
    # ---- listen streams (2026 `subscriptions/listen`, `engine/feeds.py`) -----------------
    async def listen(self, slug: str, interest: Interest) -> Listener:
        """A listen stream on pool `slug`, joined to the feed of every available server: events
        flow once this returns. Servers that cannot be joined now are tried again by the upkeep;
        with none joined, `NoHealthyServer`."""
        live = self.pool(slug)
        listener = Listener(slug, interest)
        live.listeners.add(listener)
        await self._join(live, listener, force=True)
        if not listener.feeds and not listener.quiet:
            live.listeners.discard(listener)
            listener.end("lost")
            raise NoHealthyServer(f"no server of pool {slug!r} can be listened to")
        return listener

    def unlisten(self, listener: Listener) -> None:
        """The client's stream ended: its share of the feeds is let go."""
        live = self.pools.get(listener.pool)
        if live is not None:
            live.listeners.discard(listener)
        listener.end("lost")

    async def _join(self, live: LivePool, listener: Listener, *, force: bool = False) -> None:
        targets = self._joinable(live, listener, force=force)
        if targets:
            # Joined later than the stream opened (a server back, or new): the pool's lists may
            # have changed with it, and the listener hears so.
            late = not force
            await asyncio.gather(*(self._join_one(live, listener, s, late) for s in targets))

    def _joinable(self, live: LivePool, listener: Listener, *, force: bool) -> list[ServerConfig]:
        """The available servers whose feed `listener` is not on (nor waiting to try again)."""
        now = self.clock()
        return [
            endpoint.config
            for endpoint in live.endpoints.values()
            if endpoint.available(now)
            and endpoint.id not in listener.feeds
            and endpoint.id not in listener.quiet
            and endpoint.id not in listener.joining
            and (force or self._join_again_at.get(endpoint.id, 0.0) <= now)
        ]

    async def _join_one(
        self, live: LivePool, listener: Listener, server: ServerConfig, late: bool
    ) -> None:
        listener.joining.add(server.id)
        try:
            for attempt in (1, 2):  # a feed that closed as this one came: the next one
                feed = self.feeds.get(server.id)
                if feed is None or feed.closed:
                    feed = self.feeds[server.id] = Feed(
                        server,
                        partial(self._open_feed_session, live.config, server),
                        start_timeout(live.config, server),
                    )
                try:
                    await feed.add(listener)
                    break
                except FeedClosed:
                    if attempt == 2:
                        raise
            self._join_again_at.pop(server.id, None)
            if late and server.id in listener.feeds:
                for method in LIST_CHANGED:
                    listener.offer({"method": method})
        except UpstreamError as exc:
            log.info("listen on %s: %s is not joined now: %s", live.config.slug, server.name, exc)
            self._join_again_at[server.id] = self.clock() + FEED_RETRY_SECONDS
        except Exception:  # a bug here must not fail the listen on the pool's other servers
            log.exception("listen on %s: joining %s failed", live.config.slug, server.name)
            self._join_again_at[server.id] = self.clock() + FEED_RETRY_SECONDS
        finally:
            listener.joining.discard(server.id)

    async def _open_feed_session(
        self, pool: PoolConfig, server: ServerConfig, on_event: MessageHandler
    ) -> UpstreamSession:
        # A session of the feed's own, as the gateway (no capabilities), receiving the server's
        # session-level messages: its GET stream over HTTP, everything over stdio.
        return await self.open_upstream(pool, server, on_event=on_event, listen=True)

    def _end_feed(self, server_id: int) -> bool:
        """The config ended a server's feed (removed, disabled, moved). True if there was one."""
        self._join_again_at.pop(server_id, None)
        feed = self.feeds.pop(server_id, None)
        if feed is None:
            return False
        task = asyncio.ensure_future(feed.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return True

    def _pool_changed(self, live: LivePool) -> None:
        """The pool's servers changed, and with them what it lists: every listener that asked
        hears so (and the upkeep joins it to the feeds of servers it does not have yet)."""
        for method in LIST_CHANGED:
            for listener in list(live.listeners):
                listener.offer({"method": method})

    def _tend_listeners(self, live: LivePool) -> None:
        for feed in [self.feeds.get(server_id) for server_id in live.endpoints]:
            if feed is not None:
                feed.check()
        for listener in list(live.listeners):
            if listener.ended is not None:
                live.listeners.discard(listener)
                continue
            if not self._joinable(live, listener, force=False):
                continue
            task = asyncio.ensure_future(self._join(live, listener))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def maintain(self) -> None:
        """One round of upkeep for every pool (sessions, tool lists, listen streams)."""
        now = self.clock()
        for live in list(self.pools.values()):
            if live.listeners:
                self._tend_listeners(live)
            await asyncio.gather(
                *(sp.maintain() for sp in live.sessions.values()), return_exceptions=True
            )
            stale = any(
                now - live.tools_refreshed.get(server_id, -1e18) >= TOOLS_REFRESH_SECONDS
                for server_id in live.endpoints
            )
            if stale:
                await self._refresh_tools(live)

    async def _maintain_forever(self) -> None:
        while True:
            try:
                await self.maintain()
            except Exception:
                log.exception("runtime upkeep failed")
            await asyncio.sleep(MAINTAIN_SECONDS)
