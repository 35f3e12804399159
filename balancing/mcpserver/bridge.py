"""The era bridge: a client of one protocol era gets input from a server of the other.

* **New server, old client.** A 2026-07-28 upstream that needs input answers `input_required`
  (`inputRequests`, `requestState`); a handshake-era client knows no such result. The gateway
  sends each input request to the client on the call's own stream as the server→client request
  it is (sampling, elicitation, roots), collects the answers, retries the same request upstream
  with `inputResponses` and the state (sealed by the runtime, so the retry reaches the replica
  that asked), and repeats until the server answers for good. The client sees one request. A
  client's error answer ends the request with that error, as a 2026 client's own driver raises
  it; a declined elicitation is an answer like any other.
* **Old server, new client.** On a sticky pool, a 2026 client's `tools/call` that declares
  sampling, elicitation or roots runs on an upstream session of its own, opened with the
  client's capabilities and `clientInfo` (a handshake-era server asks only clients that declared
  them) and bound to this client's round trip. When the server sends a server→client request,
  the gateway *holds* the call and answers the client `input_required`: the request under a key
  of the gateway's, and a `requestState` sealed by the gateway (AES-GCM, bound to the pool)
  naming this web process and the held call. The client's retry with `inputResponses` answers the
  server's request and the call goes on — to its result, or to the next round. Progress and logs
  reach the client on whichever of its requests is open (kept meanwhile). A held call whose
  client does not come back within the pool's call timeout is cancelled upstream; its session
  closes when the call ends. A 2026 client has no way to send an error instead of an answer (its
  driver raises locally), so a refusal on its side is an abandoned call. The held call lives in
  the process that answered the first request: a retry reaching another process is refused with
  an error naming that cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson

from balancing.engine import protocol
from balancing.engine.affinity import RequestContext
from balancing.engine.config import Era, SessionMode
from balancing.engine.errors import CallRejected, UpstreamError
from balancing.engine.request_state import InvalidState, StateSealer
from balancing.engine.runtime import TOOLS_REFRESH_SECONDS, HeadersFor, LivePool
from balancing.engine.sticky import ClientSession
from balancing.engine.upstream import ClientRefused, UpstreamSession
from balancing.errors_http import INVALID_PARAMS, ApiError, from_upstream, session_limit
from balancing.host import RuntimeHost, get_host
from balancing.keys import KeyRecord
from balancing.mcpserver import remote
from balancing.mcpserver.replies import Reply

# As the SDK's own driver (`mcp.client._input_required`): rounds before giving up, and the backoff
# when the server sends only state (it is still working).
MAX_ROUNDS: Final = 10
_STATE_ONLY_FIRST: Final = 0.05
_STATE_ONLY_CAP: Final = 0.25

Retry = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def asks_old_client(reply: Reply, result: dict[str, Any]) -> bool:
    """A 2026 upstream asked a handshake-era client for input it cannot read as a result."""
    return not reply.modern and result.get("resultType") == "input_required"


async def answer_for_old_client(
    session: ClientSession | None,
    reply: Reply,
    params: dict[str, Any] | None,
    result: dict[str, Any],
    retry: Retry,
    timeout: float,
) -> dict[str, Any]:
    """Fulfil `input_required` rounds by asking the client, until a final result; `retry`
    sends the request again with the given params. Each answer is awaited up to `timeout`."""
    if session is None or not reply.can_ask:
        raise ApiError(
            "upstream_error",
            "the server needs input (input_required) and this client cannot be asked: "
            "it has no session or does not accept an event stream",
        )
    delay = _STATE_ONLY_FIRST
    for _ in range(MAX_ROUNDS):
        requests = result.get("inputRequests")
        responses: dict[str, Any] = {}
        if isinstance(requests, dict) and requests:
            delay = _STATE_ONLY_FIRST
            responses = await _ask_all(reply, requests, timeout)
        else:
            await asyncio.sleep(delay)  # only state: the server is still working
            delay = min(delay * 2, _STATE_ONLY_CAP)
        again = {k: v for k, v in (params or {}).items() if k not in _ROUND_KEYS}
        if responses:
            again["inputResponses"] = responses
        state = result.get("requestState")
        if isinstance(state, str):
            again["requestState"] = state
        result = await retry(again)
        if result.get("resultType") != "input_required":
            return result
    raise ApiError(
        "upstream_error", f"the server still needed input after {MAX_ROUNDS} rounds: giving up"
    )


_ROUND_KEYS: Final = ("inputResponses", "requestState")


async def _ask_all(reply: Reply, requests: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Ask the client each request at once; the first refusal ends the round with its error."""
    keys = list(requests)
    asks = [asyncio.ensure_future(_ask(reply, requests[key], timeout)) for key in keys]
    try:
        answers = await asyncio.gather(*asks)
    except ClientRefused as refused:
        raise CallRejected(refused.error) from None
    except TimeoutError:
        message = f"the client did not answer the server's request within {timeout:g}s"
        raise ApiError("upstream_timeout", message) from None
    finally:
        for ask in asks:
            ask.cancel()
    return dict(zip(keys, answers, strict=True))


async def _ask(reply: Reply, request: Any, timeout: float) -> dict[str, Any]:
    if not isinstance(request, dict) or not isinstance(request.get("method"), str):
        raise ApiError("upstream_error", "the server sent an input request without a method")
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": request["method"]}
    if isinstance(request.get("params"), dict):
        message["params"] = request["params"]
    return await reply.ask(message, timeout)


# ---- old server, new client ------------------------------------------------------------------

Emit = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]

# This web process's name in the states it seals: a retry elsewhere can say where the call is.
PROCESS: Final = secrets.token_hex(6)
# The server→client requests a 2026 client answers in `inputResponses`, by the capability each
# needs declared.
_ASKABLE: Final = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
# Notifications kept for the client while none of its requests is open.
BACKLOG: Final = 256
STATE_MESSAGE: Final = "Invalid or expired requestState"


class HeldCall:
    """A `tools/call` the gateway runs on a handshake-era upstream for a 2026 client, held while
    the server waits for the client's answers."""

    def __init__(self, pool: str, key_id: int, wait_timeout: float, logs: bool) -> None:
        self.id = secrets.token_urlsafe(12)
        self.pool = pool
        self.key_id = key_id
        self.wait_timeout = wait_timeout  # how long the client may take to come back
        self.logs = logs  # the 2026 wire logs to a request only when it opts in
        self.upstream: UpstreamSession | None = None
        self.task: asyncio.Future[dict[str, Any]] | None = None
        self.asks: dict[str, tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = {}
        self.asked = asyncio.Event()
        self.emit: Emit | None = None
        self.backlog: deque[dict[str, Any]] = deque(maxlen=BACKLOG)
        self._next_key = 0
        self._keys: dict[Any, str] = {}  # the server's request id → the key the client sees
        self._abandon: asyncio.TimerHandle | None = None

    @property
    def owns_session(self) -> bool:
        """Its upstream session is opening or open (it closes when the call ends)."""
        return self.task is None or not self.task.done()

    @property
    def ref(self) -> str:
        """What the sealed state names: this process, the call, and (with a channel layer) the
        channel a retry landing on another process is sent to."""
        channel = get_host().channel
        return f"{PROCESS}.{self.id}@{channel}" if channel else f"{PROCESS}.{self.id}"

    async def on_upstream(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Everything the server sends besides the call's answer, in the call or outside it
        (this session has no other owner): notifications to the client, requests held."""
        if "id" not in message:
            method = message.get("method")
            if method == "notifications/cancelled":
                self._withdraw(message.get("params"))
                return None
            if method == "notifications/message" and not self.logs:
                return None
            emit = self.emit
            if emit is not None:
                await emit(message)
            else:
                self.backlog.append(message)
            return None
        method = message.get("method")
        if method not in _ASKABLE:
            return None  # answered "not supported"
        self._next_key += 1
        key = f"mcppool-{self._next_key}"
        request: dict[str, Any] = {"method": method}
        if isinstance(params := message.get("params"), dict):
            request["params"] = params
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.asks[key] = (request, future)
        self._keys[message["id"]] = key
        self.asked.set()
        try:
            return await future
        finally:
            self.asks.pop(key, None)
            self._keys.pop(message["id"], None)

    def _withdraw(self, params: Any) -> None:
        """The server cancelled a request of its own: it is no longer asked, nor answered."""
        request_id = params.get("requestId") if isinstance(params, dict) else None
        key = self._keys.get(request_id) if isinstance(request_id, int | str) else None
        entry = self.asks.get(key) if key is not None else None
        if entry is not None:
            entry[1].cancel()

    def answer(self, responses: Any) -> None:
        """The client's `inputResponses`, each to the server request it answers."""
        if not isinstance(responses, dict):
            return
        for key, response in responses.items():
            entry = self.asks.get(key)
            if entry is not None and not entry[1].done():
                entry[1].set_result(response if isinstance(response, dict) else {})

    async def step(self, emit: Emit, sealer: StateSealer) -> dict[str, Any]:
        """Let the call run, its notifications flowing to `emit`, until it ends (its result) or
        the server waits for the client (`input_required`, the client has `wait_timeout`)."""
        task = self.task
        assert task is not None  # noqa: S101  # started before the first step
        if self.emit is not None:
            raise ApiError("invalid_request", "this held call is being resumed by another request")
        self._disarm()
        self.emit = emit
        try:
            while self.backlog:
                await emit(self.backlog.popleft())
            while True:
                self.asked.clear()
                if task.cancelled():  # abandoned a moment ago
                    raise _gone(f"{STATE_MESSAGE}: the call it names has ended", "held_call_ended")
                if task.done():
                    _held.pop(self.id, None)  # delivered
                    return task.result()
                waiting = {k: req for k, (req, fut) in self.asks.items() if not fut.done()}
                if waiting:
                    self._arm()
                    state = sealer.seal_held(self.pool, self.ref)
                    return {"resultType": "input_required", "inputRequests": waiting,
                            "requestState": state}  # fmt: skip
                asked = asyncio.ensure_future(self.asked.wait())
                try:
                    await asyncio.wait((task, asked), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    asked.cancel()
        except asyncio.CancelledError:
            task.cancel()  # the client went away: on the 2026 wire that cancels the call
            raise
        finally:
            self.emit = None

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._abandon = loop.call_later(self.wait_timeout, self.cancel)

    def _disarm(self) -> None:
        if self._abandon is not None:
            self._abandon.cancel()
            self._abandon = None

    def cancel(self) -> None:
        """Abandoned: cancel the call upstream (`notifications/cancelled`)."""
        if self.task is not None:
            self.task.cancel()

    def ended(self, task: asyncio.Future[dict[str, Any]]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: a call nobody came back for ends quietly
        self._disarm()
        if task.cancelled() or self.emit is not None:
            _held.pop(self.id, None)  # nothing to deliver, or the open request delivers it
        else:
            # It ended between rounds (the server stopped waiting): the client's retry gets
            # the outcome, if it comes within the time a held call waits for it.
            loop = asyncio.get_running_loop()
            loop.call_later(self.wait_timeout, _held.pop, self.id, None)
        for _request, future in self.asks.values():
            future.cancel()
        if self.upstream is not None:
            closing = asyncio.ensure_future(self.upstream.close())
            _closing.add(closing)
            closing.add_done_callback(_closing.discard)


_held: dict[str, HeldCall] = {}
_closing: set[asyncio.Future[None]] = set()


def running() -> int:
    """Held calls still running upstream (the rest wait for their client's retry)."""
    return sum(1 for held in _held.values() if held.owns_session)


def quiet() -> bool:
    """No call is held and no held call's session is still closing."""
    return not _held and not _closing


async def close_all() -> None:
    """Shutting down: cancel every held call upstream and close its session."""
    tasks = [held.task for held in _held.values() if held.task is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*_closing, return_exceptions=True)


def _held_ref(host: RuntimeHost, live: LivePool, params: dict[str, Any] | None) -> str | None:
    """The held call a retry's `requestState` names, or None (not one of ours: the normal path
    opens it, and refuses it when it is not genuine)."""
    sealer = host.runtime.sealer
    if params is None or sealer is None or "requestState" not in params:
        return None
    try:
        return sealer.open(live.config.slug, params["requestState"]).held
    except InvalidState:
        return None


def holds(host: RuntimeHost, live: LivePool, method: str, params: dict[str, Any] | None) -> bool:
    """Does this 2026 request belong to the bridge: a retry of a held call, or a tool call on a
    sticky pool by a client that can be asked, to servers not known to speak 2026?"""
    if method != "tools/call" or params is None or host.runtime.sealer is None:
        return False
    if "requestState" in params:
        return _held_ref(host, live, params) is not None
    return _askable(live, params) is not None


def _askable(live: LivePool, params: dict[str, Any] | None) -> dict[str, Any] | None:
    """The capabilities a 2026 client declared that a handshake-era server of this sticky pool
    may use to ask it; None when there are none, or every server is known to speak 2026."""
    if live.config.session_mode is not SessionMode.STICKY or params is None:
        return None
    meta = params.get("_meta")
    caps = meta.get(protocol.CLIENT_CAPABILITIES_META_KEY) if isinstance(meta, dict) else None
    if not isinstance(caps, dict) or not any(caps.get(c) is not None for c in _ASKABLE.values()):
        return None
    eras = [live.eras.get(server_id) for server_id in live.endpoints]
    return caps if not eras or any(era is not Era.MODERN for era in eras) else None


def lists_as_client(live: LivePool, method: str, params: dict[str, Any] | None) -> bool:
    """A 2026 client that can be asked lists tools on a sticky pool: a handshake-era server
    offers it what it offers a client with those capabilities (server-everything registers its
    sampling, elicitation and roots tools only then)."""
    return method == "tools/list" and _askable(live, params) is not None


# Listings as a client with given capabilities sees them, by (pool, capabilities, cursor): the
# servers of a pool list the same tools (tool-aware routing flags those that differ); kept as
# long as the runtime keeps its own tool lists.
_listings: dict[tuple[str, bytes, str], tuple[float, dict[str, Any]]] = {}
_LISTINGS_MAX: Final = 256


async def tools_as_client(
    host: RuntimeHost, live: LivePool, params: dict[str, Any], headers_for: HeadersFor | None
) -> dict[str, Any]:
    """`tools/list` on a session opened with the client's capabilities (then closed), kept for
    a minute per pool and capability set."""
    runtime, slug = host.runtime, live.config.slug
    caps = _askable(live, params) or {}
    key = (slug, orjson.dumps(caps, option=orjson.OPT_SORT_KEYS), str(params.get("cursor")))
    kept = _listings.get(key)
    if kept is not None and runtime.clock() - kept[0] < TOOLS_REFRESH_SECONDS:
        return kept[1]
    try:
        live, pick = runtime.pick_binding(slug)
    except UpstreamError as exc:
        raise from_upstream(exc) from None
    try:
        upstream = await runtime.open_upstream(live.config, pick.endpoint.config, capabilities=caps)
    except UpstreamError as exc:
        runtime.settle_binding(live, pick, exc)
        raise from_upstream(exc) from None
    runtime.settle_binding(live, pick, None)
    try:
        result = await runtime.request_bound(
            slug, pick.endpoint.id, upstream, "tools/list", params, upstream_headers=headers_for
        )
    except UpstreamError as exc:
        raise from_upstream(exc) from None
    finally:
        await upstream.close()
    if len(_listings) >= _LISTINGS_MAX:
        _listings.clear()
    _listings[key] = (runtime.clock(), result)
    return result


async def run_for_new_client(
    host: RuntimeHost,
    key: KeyRecord,
    live: LivePool,
    params: dict[str, Any],
    emit: Emit,
    headers_for: HeadersFor | None,
    ctx: RequestContext | None,
) -> dict[str, Any]:
    """Start a held call (its server picked as a sticky binding would be, affinity rules
    matched on `ctx`), or resume the one the retry's state names; run it to its result or to
    the next `input_required`."""
    sealer = host.runtime.sealer
    assert sealer is not None  # noqa: S101  # `holds` said so
    ref = _held_ref(host, live, params)
    if ref is None:
        held = await _start(host, key, live, params, headers_for, ctx)
    else:
        held = _find(ref, key, live.config.slug)
        held.answer(params.get("inputResponses"))
    try:
        return await held.step(emit, sealer)
    except CallRejected:
        raise  # the server's own error, passed on as it is
    except UpstreamError as exc:
        raise from_upstream(exc) from None


def _find(ref: str, key: KeyRecord, slug: str) -> HeldCall:
    named, _, channel = ref.partition("@")
    process, _, held_id = named.partition(".")
    if process != PROCESS and remote.reachable(channel):
        # held by another web process: the retry is served there, as if it had landed there
        raise remote.OwnedElsewhere(channel, gone=_ended())
    if process != PROCESS:
        raise _gone(
            f"{STATE_MESSAGE}: the call it names is held by another web process ({process}); "
            "send a retry to the process that answered the first request",
            "held_by_another_process",
        )
    held = _held.get(held_id)
    if held is None or held.key_id != key.id or held.pool != slug:
        raise _ended()
    return held


def _ended() -> ApiError:
    return _gone(
        f"{STATE_MESSAGE}: the call it names has ended (answered, cancelled, or abandoned past "
        "the pool's call timeout, or the web process holding it is gone)",
        "held_call_ended",
    )


def _gone(message: str, reason: str) -> ApiError:
    return ApiError("invalid_arguments", message, rpc=INVALID_PARAMS, reason=reason)


def _admit_held(host: RuntimeHost, live: LivePool, key: KeyRecord) -> None:
    """A held call owns an upstream session (a process, over stdio) like a sticky client
    session: the two count together against the pool's caps."""
    config = live.config
    slug = config.slug
    owners = [s.key_id for s in host.client_sessions if s.pool == slug and s.server_id]
    owners += [h.key_id for h in _held.values() if h.pool == slug and h.owns_session]
    if len(owners) >= config.max_sticky_sessions:
        message = f"pool {slug!r} holds its maximum of {config.max_sticky_sessions} sessions"
    elif owners.count(key.id) >= config.max_sticky_sessions_per_key:
        message = (
            f"this API key holds its maximum of {config.max_sticky_sessions_per_key} "
            f"sessions in pool {slug!r}"
        )
    else:
        return
    host.runtime.metrics.rate_limited[slug] += 1
    raise session_limit(message)


async def _start(
    host: RuntimeHost,
    key: KeyRecord,
    live: LivePool,
    params: dict[str, Any],
    headers_for: HeadersFor | None,
    ctx: RequestContext | None,
) -> HeldCall:
    """Pick a server as a sticky binding would, open a session of this call's own speaking as
    the client, and start the call on it."""
    runtime, slug = host.runtime, live.config.slug
    _admit_held(host, live, key)
    meta = params.get("_meta")
    meta = meta if isinstance(meta, dict) else {}
    caps = meta.get(protocol.CLIENT_CAPABILITIES_META_KEY)
    info = meta.get(protocol.CLIENT_INFO_META_KEY)
    try:
        live, pick = runtime.pick_binding(slug, ctx)
    except UpstreamError as exc:
        raise from_upstream(exc) from None
    timeout = live.config.call_timeout
    level = meta.get(protocol.LOG_LEVEL_META_KEY)
    held = HeldCall(slug, key.id, timeout, logs=isinstance(level, str))
    _held[held.id] = held  # counted from now: its session is opening
    try:
        upstream = await runtime.open_upstream(
            live.config,
            pick.endpoint.config,
            capabilities=caps if isinstance(caps, dict) else {},
            on_event=held.on_upstream,
            listen=True,
            client_info=info if isinstance(info, dict) else None,
        )
    except UpstreamError as exc:
        _held.pop(held.id, None)
        runtime.settle_binding(live, pick, exc)
        raise from_upstream(exc) from None
    except BaseException:
        _held.pop(held.id, None)
        raise
    runtime.settle_binding(live, pick, None)
    held.upstream = upstream
    if isinstance(level, str) and "logging" in upstream.server_capabilities:
        # the request's own log level (2026 `_meta`) is the session's level in the handshake era
        try:
            with contextlib.suppress(UpstreamError):
                await upstream.request("logging/setLevel", {"level": level}, timeout=timeout)
        except BaseException:  # cancelled: the client went away before its call started
            _held.pop(held.id, None)
            await upstream.close()
            raise
    call = runtime.request_bound(
        slug,
        pick.endpoint.id,
        upstream,
        "tools/call",
        params,
        on_message=held.on_upstream,
        upstream_headers=headers_for,
        # the server's time and the client's: each wait for the client is bounded on its own
        timeout=timeout * (MAX_ROUNDS + 1),
    )
    held.task = asyncio.ensure_future(call)
    held.task.add_done_callback(held.ended)
    return held
