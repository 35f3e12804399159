"""A multi-round-trip request across two web processes: the first round through one, the retry
through the other, over three replicas whose `requestState` only the issuing process can open.
No store is shared between the web processes: the sealed state alone routes the retry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.api.gateway import add_key, add_pool
from tests.reliability.conftest import postgres, start_web, var_dir, web_env, webs  # noqa: F401
from tests.upstreams.procs import UpstreamProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

MODERN = "2026-07-28"


def _call(params: dict[str, Any], request_id: int) -> tuple[dict[str, Any], dict[str, str]]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": "two", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"sampling": {}},
    }
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {**params, "_meta": meta}}  # fmt: skip
    headers = {
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": params["name"],
        "Accept": "application/json, text/event-stream",
    }
    return body, headers


def _answers(input_requests: dict[str, Any]) -> dict[str, Any]:
    """The client's side: answer each sampling request with `sampled:<prompt>`."""
    out: dict[str, Any] = {}
    for key, request in input_requests.items():
        assert request["method"] == "sampling/createMessage"
        prompt = request["params"]["messages"][0]["content"]["text"]
        out[key] = {"role": "assistant", "model": "test", "stopReason": "endTurn",
                    "content": {"type": "text", "text": f"sampled:{prompt}"}}  # fmt: skip
    return out


def test_input_required_retry_through_another_web_process_reaches_its_replica(
    replicas: list[UpstreamProcess],
    webs: list[UpstreamProcess],  # noqa: F811
    var_dir: Path,  # noqa: F811
) -> None:
    # given a pool of three replicas and two web processes sharing nothing but the database
    add_pool("proto", [(r.name, r.url) for r in replicas])
    secret = add_key("two", ["proto"])
    webs.append(start_web(web_env(var_dir), "web-a"))
    webs.append(start_web(web_env(var_dir), "web-b"))
    auth = {"Authorization": f"Bearer {secret}"}
    answered_by = set()
    with httpx2.Client(timeout=30) as http:
        for i in range(6):
            first_web, retry_web = webs[i % 2], webs[(i + 1) % 2]
            arguments = {"name": "sampled", "arguments": {"prompt": f"q{i}"}}
            # when the first round goes through one process
            body, headers = _call(arguments, 2 * i + 1)
            first = http.post(f"http://127.0.0.1:{first_web.port}/mcp/proto/", json=body,
                              headers={**auth, **headers}).json()["result"]  # fmt: skip
            assert first["resultType"] == "input_required"
            # and the client's retry, with its answers, through the other
            retry = {**arguments, "inputResponses": _answers(first["inputRequests"]),
                     "requestState": first["requestState"]}  # fmt: skip
            body, headers = _call(retry, 2 * i + 2)
            done = http.post(f"http://127.0.0.1:{retry_web.port}/mcp/proto/", json=body,
                             headers={**auth, **headers}).json()  # fmt: skip
            # then the replica that asked completes it
            assert "result" in done, done
            replica, _, text = done["result"]["content"][0]["text"].partition(":")
            assert text == f"sampled:q{i}"
            answered_by.add(replica)
    assert len(answered_by) > 1


def test_retry_of_a_held_call_at_another_web_process_without_redis_names_the_cause(
    handshake_sse: UpstreamProcess,
    webs: list[UpstreamProcess],  # noqa: F811
    var_dir: Path,  # noqa: F811
) -> None:
    # given a sticky pool of a handshake-era server, and two web processes without a channel
    # layer between them (with Redis the retry is served by the holder:
    # test_scale_out.py::test_held_call_continues_from_any_process_and_ends_with_its_holder)
    add_pool("held", [("h1", handshake_sse.url)], session_mode="sticky", era="handshake")
    secret = add_key("two", ["held"])
    webs.append(start_web(web_env(var_dir), "web-a"))
    webs.append(start_web(web_env(var_dir), "web-b"))
    auth = {"Authorization": f"Bearer {secret}"}
    arguments = {"name": "sampled", "arguments": {"prompt": "q"}}
    with httpx2.Client(timeout=30) as http:
        # when web-a holds a 2026 client's call (the server asked for sampling mid-call)
        body, headers = _call(arguments, 1)
        first = http.post(f"http://127.0.0.1:{webs[0].port}/mcp/held/", json=body,
                          headers={**auth, **headers}).json()["result"]  # fmt: skip
        assert first["resultType"] == "input_required"
        retry = {**arguments, "inputResponses": _answers(first["inputRequests"]),
                 "requestState": first["requestState"]}  # fmt: skip
        body, headers = _call(retry, 2)
        # then its retry at web-b is refused, saying the call is held by another process
        elsewhere = http.post(f"http://127.0.0.1:{webs[1].port}/mcp/held/", json=body,
                              headers={**auth, **headers})  # fmt: skip
        error = elsewhere.json()["error"]
        assert (elsewhere.status_code, error["code"]) == (400, -32602)
        assert error["data"]["reason"] == "held_by_another_process"
        # and at web-a it completes
        done = http.post(f"http://127.0.0.1:{webs[0].port}/mcp/held/", json=body,
                         headers={**auth, **headers}).json()  # fmt: skip
        assert done["result"]["content"][0]["text"] == "h1:sampled:q"
