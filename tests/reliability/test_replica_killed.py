"""A replica SIGKILLed under load: calls that never reached it go elsewhere and succeed, calls in
flight on it fail with a 502 (never hang), and once it is back and passes a check it takes calls.

The gateway is the real app under uvicorn in this test's process (`tests.api.gateway`), so the
test can read the victim's in-flight count and kill it in the same instant (nothing else runs on
the event loop between the two), and count the calls the gateway still sent the victim before its
event loop read the closed connections — those went into a dead socket and fail exactly like the
calls in flight. "Failed calls ≤ those two together" is then exact, not a tolerance.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from asgiref.sync import sync_to_async

from monitoring import checks
from servers.models import Server
from tests.api.gateway import Gateway, add_key, add_pool, serve_gateway
from tests.upstreams import procs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

CLIENTS = 12
CALL_SECONDS = 0.1  # each call runs this long upstream, so every replica has calls in flight
CLIENT_TIMEOUT = 30.0  # a call that hangs fails the test through this, never stalls it
AFTER_KILL = 2.0  # load keeps running this long after the kill
VICTIM = "r2"


@pytest.fixture
def replicas() -> Iterator[dict[str, procs.UpstreamProcess]]:
    started = {
        name: procs.start_faulty_http(name=name, json_response=True) for name in ("r1", "r2", "r3")
    }
    yield started
    for replica in started.values():
        replica.stop()


@sync_to_async
def setup(replicas: dict[str, procs.UpstreamProcess]) -> str:
    # `slow` carries no idempotent hint, so a call delivered to the victim is not sent again.
    # The retry budget is opened wide: it guards against retry storms (tested on its own) and
    # is not what this test is about. No slow start, so the restarted replica gets calls at once.
    add_pool(
        "web",
        [(name, replica.url) for name, replica in replicas.items()],
        retry_budget_min=100,
        slow_start_window=0.0,
    )
    checks.check_servers(Server.objects.all())  # all up before the load starts
    return add_key("app", ["web"])


@sync_to_async
def check_victim() -> None:
    checks.check_servers(Server.objects.filter(name=VICTIM))


def victim_endpoint(gw: Gateway) -> Any:
    live = gw.host.runtime.pool("web")
    return next(e for e in live.endpoints.values() if e.config.name == VICTIM)


def victim_failures(gw: Gateway) -> int:
    """Failed calls the runtime has recorded on the victim so far."""
    calls = gw.host.runtime.metrics.calls
    mine = [
        (label, n)
        for (pool, server, label), n in calls.items()
        if (pool, server) == ("web", VICTIM)
    ]
    return sum(n for label, n in mine if label not in ("ok", "tool_error"))


async def sends_until_failure(gw: Gateway, victim: Any, picks: int, failed: int) -> int:
    """Calls sent to the victim from the kill until the runtime saw its first failure there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLIENT_TIMEOUT
    for _ in range(10**7):  # bounded by the deadline long before the count
        if victim_failures(gw) != failed or loop.time() > deadline:
            break
        await asyncio.sleep(0)  # one turn of the event loop: the gateway runs on
    return int(victim.stats.picks - picks)


class Load:
    """`CLIENTS` REST clients calling `slow` until stopped; every outcome recorded."""

    def __init__(self, gw: Gateway, key: str) -> None:
        self.gw = gw
        self.headers = {"Authorization": f"Bearer {key}"}
        self.outcomes: Counter[str] = Counter()
        self.stopping = False

    async def client(self, http: aiohttp.ClientSession) -> None:
        url = f"{self.gw.url}/api/v1/pools/web/tools/slow/call"
        body = {"arguments": {"seconds": CALL_SECONDS}}
        while not self.stopping:
            try:
                async with http.post(url, json=body, headers=self.headers) as answer:
                    payload = await answer.json(content_type=None)
            except TimeoutError:
                self.outcomes["hung"] += 1
                continue
            if answer.status == 200 and payload.get("isError") is not True:
                self.outcomes["ok"] += 1
            else:
                self.outcomes[f"{answer.status} {payload.get('error', {}).get('code')}"] += 1


async def test_replica_killed_under_load_only_in_flight_calls_fail_and_it_returns(
    replicas: dict[str, procs.UpstreamProcess],
) -> None:
    # given three replicas in one pool, checked up, and clients calling through REST
    key = await setup(replicas)
    async with serve_gateway() as gw:
        load = Load(gw, key)
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            clients = [asyncio.create_task(load.client(http)) for _ in range(CLIENTS)]
            try:
                victim = victim_endpoint(gw)
                for _ in range(1000):  # until the victim has calls running (bounded)
                    if victim.stats.in_flight and load.outcomes["ok"] >= CLIENTS:
                        break
                    await asyncio.sleep(0.005)

                # when the victim is SIGKILLed while it holds calls (no await in between), and
                # this test waits for it to be gone before letting the gateway run on
                in_flight_at_kill = victim.stats.in_flight
                picks_at_kill = victim.stats.picks
                failed_at_kill = victim_failures(gw)
                before = load.outcomes.copy()
                os.killpg(replicas[VICTIM].pid, signal.SIGKILL)
                replicas[VICTIM].process.wait(10)
                # The gateway learns of the death when its event loop reads the closed
                # connections: a call it sent the victim before then went into a dead socket
                # and fails like one in flight. Count those sends until its first failure.
                sent_unaware = await sends_until_failure(gw, victim, picks_at_kill, failed_at_kill)
                await asyncio.sleep(AFTER_KILL)
            finally:
                load.stopping = True
                await asyncio.gather(*clients)

        # then no call hung; the only failures are 502s, of calls the victim held: in flight at
        # the kill, or sent before the gateway could know. Calls refused a connection afterwards
        # (never delivered) went to another replica: no 503, no failure beyond those.
        after = load.outcomes - before
        failures = {k: n for k, n in after.items() if k != "ok"}
        assert in_flight_at_kill > 0
        assert set(failures) <= {"502 upstream_error"}, after
        held = in_flight_at_kill + sent_unaware
        assert sum(failures.values()) <= held, (after, in_flight_at_kill, sent_unaware)
        # and calls kept succeeding on the other replicas
        assert after["ok"] > CLIENTS, after

        # when the victim is restarted on its port and passes a health check
        replicas[VICTIM].stop()
        replicas[VICTIM] = procs.start_faulty_http(
            name=VICTIM, json_response=True, port=replicas[VICTIM].port
        )
        await check_victim()
        await gw.settle()

        # then it takes calls again
        assert await answers_from(gw, key, VICTIM), "the restarted replica never answered"


async def answers_from(gw: Gateway, key: str, name: str, calls: int = 200) -> bool:
    """Whether one of `calls` `whoami` calls is answered by replica `name`."""
    url = f"{gw.url}/api/v1/pools/web/tools/whoami/call"
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for _ in range(calls):
            async with http.post(url, json={}, headers=headers) as answer:
                payload = await answer.json(content_type=None)
            if answer.status == 200:
                replica = json.loads(payload["content"][0]["text"])["name"]
                if replica == name:
                    return True
            await asyncio.sleep(0.02)
    return False
