"""`/metrics` after real calls through a runtime: the mcppool_* series move, with bounded labels."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest
from django.test import AsyncClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from balancing.engine.affinity import RequestContext
from balancing.engine.config import PoolConfig, ServerConfig, Snapshot, Strategy, Transport
from balancing.engine.runtime import Runtime
from balancing.host import get_host
from monitoring import metrics
from tests.upstreams import procs

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(runtime: Runtime) -> Samples:
    registry = CollectorRegistry()
    registry.register(metrics.RuntimeCollector(lambda: runtime))
    return parse(generate_latest(registry).decode())


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[procs.UpstreamProcess]]:
    with procs.faulty_replicas(2) as started:
        yield started


def servers_of(replicas: list[procs.UpstreamProcess]) -> list[ServerConfig]:
    return [replace(r.config(server_id=i + 1), name=r.name) for i, r in enumerate(replicas)]


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    rt = Runtime()
    yield rt
    await rt.close(grace=1)


@pytest.mark.upstream
async def test_collector_after_calls_counts_outcomes_per_server(
    runtime: Runtime, replicas: list[procs.UpstreamProcess]
) -> None:
    # given a round-robin pool of two replicas
    pool = PoolConfig(
        id=1, slug="p", strategy=Strategy.ROUND_ROBIN, servers=tuple(servers_of(replicas))
    )
    await runtime.start(Snapshot(1, (pool,)))
    # when 6 calls answer and 2 fail as tools
    for i in range(6):
        await runtime.call_tool("p", "echo", {"text": str(i)})
    for _ in range(2):
        await runtime.call_tool("p", "fail", {})
    # then every call is counted once, on the server that took it, with its outcome
    s = scrape(runtime)
    ok = [value(s, "mcppool_calls_total", pool="p", server=n, outcome="ok") for n in ("r0", "r1")]
    errors = [
        value(s, "mcppool_calls_total", pool="p", server=n, outcome="tool_error")
        for n in ("r0", "r1")
    ]
    assert ok == [3, 3]
    assert errors == [1, 1]
    assert value(s, "mcppool_call_duration_seconds_count", pool="p", server="r0") == 4
    assert value(s, "mcppool_call_duration_seconds_bucket", pool="p", server="r0", le="+Inf") == 4
    assert value(s, "mcppool_call_duration_seconds_bucket", pool="p", server="r0", le="60.0") == 4
    assert value(s, "mcppool_acquire_wait_seconds_count", pool="p") == 8
    for name in ("r0", "r1"):
        assert value(s, "mcppool_picks_total", pool="p", server=name, strategy="round_robin") == 4
        assert value(s, "mcppool_server_up", pool="p", server=name) == 1
        assert value(s, "mcppool_server_health", pool="p", server=name, health="unknown") == 1
        assert value(s, "mcppool_in_flight", pool="p", server=name) == 0
        sessions = sum(
            value(s, "mcppool_sessions", pool="p", server=name, state=state)
            for state in metrics.SESSION_STATES
        )
        assert sessions >= 1  # the session that carried the calls is there
    assert value(s, "mcppool_config_version") == 1


@pytest.mark.upstream
async def test_collector_dead_replica_counts_retries_and_ejection(
    runtime: Runtime, replicas: list[procs.UpstreamProcess]
) -> None:
    # given a pool where one replica's port has nothing listening
    dead = ServerConfig(
        id=9, name="dead", transport=Transport.STREAMABLE_HTTP,
        url=f"http://127.0.0.1:{procs.free_port()}/mcp",
    )  # fmt: skip
    pool = PoolConfig(id=1, slug="p", servers=(dead, *servers_of(replicas)))
    await runtime.start(Snapshot(1, (pool,)))
    # when enough calls pass for the dead one to fail five times in a row
    for i in range(30):
        await runtime.call_tool("p", "echo", {"text": str(i)})
    # then its failures, the retries elsewhere and its ejection are on /metrics
    s = scrape(runtime)
    assert value(s, "mcppool_calls_total", pool="p", server="dead", outcome="transport_error") >= 5
    assert value(s, "mcppool_retries_total", pool="p") >= 1
    assert value(s, "mcppool_ejections_total", pool="p", server="dead") == 1
    assert value(s, "mcppool_server_up", pool="p", server="dead") == 0
    assert value(s, "mcppool_server_health", pool="p", server="dead", health="ejected") == 1
    assert value(s, "mcppool_server_error_ratio", pool="p", server="dead") > 0


@pytest.mark.upstream
async def test_collector_many_clients_labels_stay_bounded(
    runtime: Runtime, replicas: list[procs.UpstreamProcess]
) -> None:
    # given a pool and 40 different clients, each with its own key and arguments
    pool = PoolConfig(id=1, slug="p", servers=tuple(servers_of(replicas)))
    await runtime.start(Snapshot(1, (pool,)))
    for _ in range(2):  # one call per replica (round robin)
        await runtime.call_tool("p", "echo", {"text": "warm-up"})
    before = scrape(runtime)
    for i in range(40):
        ctx = RequestContext(
            api_key_name=f"key-{i}", client_id=f"client-{i}", headers={}, tool="echo"
        )
        await runtime.call_tool("p", "echo", {"text": f"request-{i}"}, ctx=ctx)
    # then no series was added: labels carry only pool, server, outcome, state and strategy
    after = scrape(runtime)
    assert set(after) == set(before)
    values = {v for (_, labels) in after for (_, v) in labels}
    assert not [v for v in values if "key-" in v or "client-" in v or "request-" in v]
    label_names = {k for (_, labels) in after for (k, _) in labels}
    assert label_names <= {"pool", "server", "outcome", "state", "health", "strategy", "le"}


@pytest.mark.upstream
async def test_metrics_endpoint_serves_the_process_runtime(
    runtime: Runtime, replicas: list[procs.UpstreamProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given this process's runtime has served a call
    pool = PoolConfig(id=1, slug="web", servers=tuple(servers_of(replicas)[:1]))
    await runtime.start(Snapshot(3, (pool,)))
    await runtime.call_tool("web", "echo", {"text": "x"})
    monkeypatch.setattr(get_host(), "runtime", runtime)
    metrics.install()
    # when Prometheus scrapes /metrics
    response = await AsyncClient().get("/metrics")
    # then django-prometheus's series and the pool's are both there
    assert response.status_code == 200
    s = parse(response.content.decode())
    assert value(s, "mcppool_calls_total", pool="web", server="r0", outcome="ok") == 1
    assert value(s, "mcppool_config_version") == 3
    assert any(name.startswith("django_http_requests") for name, _ in s)


def test_record_health_check_counts_outcomes_and_durations() -> None:
    labels = {"pool": "hc-pool", "server": "hc-a"}
    metrics.record_health_check("hc-pool", "hc-a", ok=True, seconds=0.004)
    metrics.record_health_check("hc-pool", "hc-a", ok=False, seconds=2.0)
    s = parse(generate_latest().decode())
    assert value(s, "mcppool_health_checks_total", outcome="ok", **labels) == 1
    assert value(s, "mcppool_health_checks_total", outcome="failed", **labels) == 1
    assert value(s, "mcppool_health_check_duration_seconds_count", **labels) == 2
    assert value(s, "mcppool_health_check_duration_seconds_bucket", le="0.005", **labels) == 1


WORKER = textwrap.dedent(
    """
    import multiprocessing, os, django
    django.setup()
    from monitoring import worker_metrics
    worker_metrics.serve_worker_metrics()  # what the worker_init signal runs

    def check(ok):  # what a pool child does when it runs a health check
        from monitoring.metrics import record_health_check
        record_health_check("wp", "wa", ok, 0.01)

    ctx = multiprocessing.get_context("fork")  # Celery's prefork pool forks its children
    for ok in (True, True, False):
        child = ctx.Process(target=check, args=(ok,))
        child.start()
        child.join(20)
    print("ready", flush=True)
    import time; time.sleep(30)
    """
)


def test_worker_metrics_sum_checks_of_every_forked_child(tmp_path: Any) -> None:
    # given a worker serving its metrics, whose three children each ran a check and exited
    port = procs.free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "MCPPOOL_VAR_DIR": str(tmp_path),
        metrics_port_env(): str(port),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    worker = subprocess.Popen(
        procs.guarded([sys.executable, "-c", WORKER]),
        env=env,
        stdout=subprocess.PIPE,
        cwd=procs.ROOT,
        start_new_session=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == b"ready"
        # when Prometheus scrapes the worker's port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            s = parse(response.read().decode())
        # then it sees the sum over the children, with the check's labels
        labels = {"pool": "wp", "server": "wa"}
        assert value(s, "mcppool_health_checks_total", outcome="ok", **labels) == 2
        assert value(s, "mcppool_health_checks_total", outcome="failed", **labels) == 1
        assert value(s, "mcppool_health_check_duration_seconds_count", **labels) == 3
    finally:
        worker.kill()
        worker.wait(10)
        assert worker.stdout is not None
        worker.stdout.close()


def test_worker_metrics_without_port_serves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics_port_env(), raising=False)
    started: list[Any] = []
    monkeypatch.setattr("monitoring.worker_metrics.serve", lambda *a: started.append(a))
    from monitoring import worker_metrics

    worker_metrics.serve_worker_metrics()
    assert started == []


def metrics_port_env() -> str:
    from monitoring.worker_metrics import PORT_ENV

    return PORT_ENV
