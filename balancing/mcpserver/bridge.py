"""The era bridge: a client of one protocol era gets input from a server of the other.

* **New server, old client.** A 2026-07-28 upstream that needs input answers `input_required`
  (`inputRequests`, `requestState`); a handshake-era client knows no such result. The gateway
  sends each input request to the client on the call's own stream as the server→client request
  it is (sampling, elicitation, roots), collects the answers, retries the same request upstream
  with `inputResponses` and the state (sealed by the runtime, so the retry reaches the replica
  that asked), and repeats until the server answers for good. The client sees one request. A
  client's error answer ends the request with that error, as a 2026 client's own driver raises
  it; a declined elicitation is an answer like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from balancing.engine.errors import CallRejected
from balancing.engine.sticky import ClientSession
from balancing.engine.upstream import ClientRefused
from balancing.errors_http import ApiError
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
