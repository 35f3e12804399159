"""Fuzz the REST API from its own OpenAPI document (schemathesis): no 5xx but the documented
upstream errors, answers that match the document, and the process still serving afterwards.

The target is a real mcppool process (`bench.gateway`: uvicorn on a throw-away SQLite var dir)
with one pool of one replica, fuzzed with an admin-scoped key so the config writes are exercised
past the permission check, not just refused. Every operation gets schema-valid and schema-invalid
requests, with random pool names and with the real pool's. Server bodies are kept to HTTP servers
on 127.0.0.1: a fuzzer must not start programs on the host or reach the network.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err, Ok
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from bench import gateway
from tests.upstreams import procs

pytestmark = pytest.mark.upstream

EXAMPLES = 25  # per operation and generation mode
POOL = "echo"
CALM = "calm"  # a second pool on the same replica that the fuzzer never names
# What an upstream failure is documented to answer (README, `balancing.errors_http`).
UPSTREAM_STATUSES = frozenset({502, 503, 504})
UNREACHABLE = "http://127.0.0.1:9/mcp"  # the discard port: nothing listens there
CREATE_ADMIN_KEY = (
    "from servers import services; "
    "print(services.create_api_key('fuzz-admin', all_pools=True, is_admin=True)[1])"
)


@dataclass
class Target:
    gateway: gateway.Gateway
    admin_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    replica = procs.start_faulty_http(name="r1", json_response=True)
    try:
        servers = [{"name": "r1", "transport": "streamable_http", "url": replica.url}]
        pools = [{"slug": slug, "name": slug.title(), "servers": servers} for slug in (POOL, CALM)]
        var_dir, token = gateway.prepare(pools)
        made = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", CREATE_ADMIN_KEY],
            cwd=procs.ROOT, env=gateway.environment(var_dir), capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        gw = gateway.start(var_dir, token, ready_path=f"/api/v1/pools/{POOL}/tools/echo/call")
        try:
            yield Target(gw, made.stdout.strip().splitlines()[-1])
        finally:
            gw.stop()
    finally:
        replica.stop()


def only_upstream_server_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 5xx only as a documented upstream error (502/503/504 with the error body)."""
    if response.status_code >= 500:
        assert response.status_code in UPSTREAM_STATUSES, f"server error {response.status_code}"
        body = response.json()
        assert set(body) == {"error"}, body
        assert body["error"]["code"], body
    return None


def confine(case: Any) -> None:
    """Keep a generated config write harmless: HTTP servers on 127.0.0.1 only."""
    body = case.body
    if not isinstance(body, dict):
        return
    for field in ("command", "args", "env", "cwd"):
        body.pop(field, None)
    if "transport" in body:
        body["transport"] = "streamable_http"
    if "url" in body:
        body["url"] = UNREACHABLE


def strategies(operation: Any, mode: GenerationMode) -> st.SearchStrategy[Any]:
    """Random pool names, and — except for deletions, which would end the run's pool — the
    real pool, so requests get past "unknown pool" into the views and the runtime."""
    random = operation.as_strategy(generation_mode=mode)
    if "{slug}" not in operation.path or operation.method.upper() == "DELETE":
        return random  # type: ignore[no-any-return]
    real = operation.as_strategy(generation_mode=mode, path_parameters={"slug": POOL})
    return st.one_of(random, real)


def fuzz(target: Target, operation: Any, mode: GenerationMode) -> str | None:
    """Run one operation's examples; the failure report, or None."""
    excluded: list[Callable[..., Any]] = [not_a_server_error]
    if operation.method.upper() in ("POST", "PATCH") and "/tools/" not in operation.path:
        # Config writes share one optional-everything shape for create and update, and the
        # models' own rules (slug pattern, ranges, required on create) answer a documented 400.
        excluded.append(positive_data_acceptance)
    if operation.method.upper() == "GET":
        # Unknown query parameters are ignored, as most HTTP APIs do; and the negative cases
        # "without the Authorization header" get ours back (the key is fixed for every case).
        excluded.append(negative_data_rejection)
    session = requests.Session()

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(case=strategies(operation, mode))
    def run(case: Any) -> None:
        confine(case)
        case.call_and_validate(
            base_url=target.gateway.base_url,
            session=session,
            headers=target.headers,
            excluded_checks=excluded,
            additional_checks=[only_upstream_server_errors],
            timeout=30,
        )

    try:
        run()
    except BaseException as exc:  # schemathesis reports as an exception group
        if isinstance(exc, KeyboardInterrupt):
            raise
        return str(exc)[:3000]
    finally:
        session.close()
    return None


def _loaded(
    result: Ok[APIOperation[Any, Any, Any, Any]] | Err[Any],
) -> APIOperation[Any, Any, Any, Any]:
    assert isinstance(result, Ok), f"an operation of the document does not load: {result.err()}"
    return result.ok()


def test_rest_api_fuzzed_from_openapi_has_no_server_errors_and_matches_its_document(
    target: Target,
) -> None:
    # given the OpenAPI document the live process serves
    schema = schemathesis.openapi.from_url(f"{target.gateway.base_url}/api/v1/openapi.json")
    operations = [_loaded(result) for result in schema.get_all_operations()]
    assert len(operations) > 10

    # when every operation is fuzzed with valid and invalid requests
    failures = {
        f"{mode.value} {operation.label}": report
        for operation in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if (report := fuzz(target, operation, mode)) is not None
    }

    # then nothing failed, and the process still serves calls (on the pool the fuzzer could not
    # drain or reconfigure)
    assert not failures, "\n\n".join(f"== {k}\n{v}" for k, v in failures.items())
    answer = requests.post(
        target.gateway.rest_url(CALM), json={"arguments": {"text": "still here"}},
        headers=target.headers, timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200
    assert "still here" in answer.text


def test_config_write_with_explicit_null_is_400_not_500(target: Target) -> None:
    # given a pool; when a client sends null for a field that cannot be empty (found by the fuzzer)
    answer = requests.patch(
        f"{target.gateway.base_url}/api/v1/pools/{CALM}", json={"name": None},
        headers=target.headers, timeout=30,
    )  # fmt: skip

    # then it is refused as a bad request naming the field
    assert answer.status_code == 400
    assert answer.json()["error"]["fields"] == ["name"]
