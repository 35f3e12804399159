"""The era bridge: a client of one protocol era gets input from a server of the other, and gets
what a client of the server's own era gets directly.

Real clients (the mcp SDK 2.3.0 `Client`, default 2026-07-28 mode and `legacy`) and real
upstreams: `tests.mcp.upstream` (an SDK server whose tools ask for input through resolvers) and
npm server-everything (handshake era only).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import mcp_types as types
import pytest
from asgiref.sync import sync_to_async
from mcp import Client
from mcp.shared.exceptions import MCPError
from pydantic import FileUrl

from servers import services
from servers.models import Server
from tests.api.gateway import Gateway, add_key, add_pool, serve_gateway
from tests.mcp.conftest import sampled, transport
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

Mode = Literal["auto", "legacy"]


def _setup(url: str) -> dict[str, str]:
    add_pool("new-shared", [("r1", url)])
    sticky = add_pool("new-sticky", [], session_mode="sticky")
    # a sticky session speaks the handshake era upstream unless the server is set to 2026
    services.save(
        Server(pool=sticky, name="r1", transport="streamable_http", url=url, era="modern")
    )
    return {"app": add_key("app", ["new-shared", "new-sticky"])}


@pytest.fixture
async def gw(replicas: list[procs.UpstreamProcess]) -> AsyncIterator[Gateway]:
    keys = await sync_to_async(_setup)(replicas[0].url)
    async with serve_gateway() as gateway:
        gateway.keys.update(keys)
        yield gateway


async def _accept(context: Any, params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "ada"})


async def _decline(context: Any, params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="decline")


async def _roots(context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///srv/data"), name="data")])


async def _refuse(context: Any, params: Any) -> types.ErrorData:
    return types.ErrorData(code=-1, message="User rejected sampling")


CALLBACKS: dict[str, dict[str, Any]] = {
    "accepting": {"sampling_callback": sampled, "elicitation_callback": _accept,
                  "list_roots_callback": _roots},
    "declining": {"sampling_callback": sampled, "elicitation_callback": _decline,
                  "list_roots_callback": _roots},
}  # fmt: skip
# tool, arguments, which client answers
CASES = [
    ("sampled", {"prompt": "hi"}, "accepting"),  # one round, sampling
    ("asked", {}, "accepting"),  # elicitation, accepted
    ("asked", {}, "declining"),  # elicitation, declined: an answer, not an error
    ("interview", {}, "accepting"),  # two rounds: elicitation, then sampling from its answer
    ("interview", {}, "declining"),
    ("rooted", {}, "accepting"),  # roots
]


async def _call(target: Any, mode: Mode, tool: str, args: dict[str, Any], who: str) -> Any:
    async with Client(target, mode=mode, **CALLBACKS[who]) as client:
        result = await client.call_tool(tool, args)
    return result.model_dump(exclude={"meta"}, by_alias=True, exclude_none=True)


# ---- new server, old client ----------------------------------------------------------------


@pytest.mark.parametrize(("tool", "args", "who"), CASES)
async def test_old_client_on_shared_pool_gets_what_a_new_client_gets_from_a_new_server(
    gw: Gateway, replicas: list[procs.UpstreamProcess], tool: str, args: dict[str, Any], who: str
) -> None:
    # given what a 2026 client gets from the 2026 server directly (input_required rounds)
    direct = await _call(replicas[0].url, "auto", tool, args, who)
    assert direct["isError"] is False, direct
    # when a handshake-era client calls it through a shared pool, whose upstream sessions speak
    # 2026-07-28 to that server (so the server answers input_required to the gateway)
    through = await _call(transport(gw, "new-shared"), "legacy", tool, args, who)
    # then the client was asked as the handshake era asks, and got the same result
    assert through == direct


async def test_old_client_on_sticky_pool_of_a_2026_server_gets_input_required_bridged(
    gw: Gateway, replicas: list[procs.UpstreamProcess]
) -> None:
    # given a sticky pool whose server is set to the 2026 era: the client's own upstream
    # session speaks 2026-07-28, so the server answers it input_required
    direct = await _call(replicas[0].url, "auto", "interview", {}, "accepting")
    # when a handshake-era client runs a two-round tool on it, then it is asked and answered
    through = await _call(transport(gw, "new-sticky"), "legacy", "interview", {}, "accepting")
    assert through == direct
    assert through["content"][0]["text"] == "r1:sampled:greet accepted ada"


async def test_old_clients_refusal_ends_the_call_with_its_error_as_a_new_clients_does(
    gw: Gateway, replicas: list[procs.UpstreamProcess]
) -> None:
    errors = []
    for target, mode in ((replicas[0].url, "auto"), (transport(gw, "new-shared"), "legacy")):
        async with Client(target, mode=mode, sampling_callback=_refuse) as client:
            with pytest.raises(MCPError) as raised:
                await client.call_tool("sampled", {"prompt": "hi"})
        errors.append((raised.value.error.code, raised.value.error.message))
    assert errors[0] == errors[1] == (-1, "User rejected sampling")
