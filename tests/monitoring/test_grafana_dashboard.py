"""The provisioned Grafana dashboard asks only for metrics the service really exports."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from balancing.engine.config import PoolConfig, Snapshot
from balancing.host import get_host
from monitoring import metrics
from tests.helpers.fakes import Clock, fake_runtime, server

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "mcppool.json"
# The service's own families; PromQL functions, keywords and labels never start like this.
METRIC = re.compile(r"\b(?:mcppool|django|process|python)_[A-Za-z0-9_]*")
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every target and every templating query."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        yield f"${variable['name']}", query["query"] if isinstance(query, dict) else query


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name `/metrics` serves after a runtime took calls and a check ran."""
    clock = Clock()
    runtime = fake_runtime(clock)
    loop = asyncio.new_event_loop()
    pool = PoolConfig(id=1, slug="p", servers=(server(1, "a"),))
    host = get_host()
    saved = host.runtime
    try:
        loop.run_until_complete(runtime.start(Snapshot(1, (pool,))))
        loop.run_until_complete(runtime.call_tool("p", "echo", {}))
        metrics.record_health_check("p", "a", ok=True, seconds=0.01)
        metrics.install()
        host.runtime = runtime
        client = Client(HTTP_HOST="127.0.0.1")
        client.get("/metrics")  # so django-prometheus has seen a request of its own
        text = client.get("/metrics").content.decode()
    finally:
        host.runtime = saved
        loop.run_until_complete(runtime.close(grace=0))
        loop.close()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_grafana_every_query_names_an_exported_metric(
    dashboard: dict[str, Any], exported: set[str]
) -> None:
    unknown = []
    for title, expr in queries(dashboard):
        names = METRIC.findall(expr)
        assert names, f"{title!r}: no metric of the service in {expr!r}"
        unknown += [(title, name) for name in names if name not in exported]
    assert not unknown, f"metrics the service does not export: {unknown}"


def test_grafana_dashboard_covers_what_on_call_needs(dashboard: dict[str, Any]) -> None:
    text = " ".join(expr for _, expr in queries(dashboard))
    for family in (
        "mcppool_server_up",  # pools overview, health timeline
        "mcppool_call_duration_seconds_bucket",  # p50 / p99 per server
        "mcppool_calls_total",  # calls/s, error rate
        "mcppool_in_flight",
        "mcppool_sessions",
        "mcppool_ejections_total",
        "mcppool_picks_total",  # load distribution
        "mcppool_health_checks_total",
    ):
        assert family in text, family
    kinds = {p["type"] for p in dashboard["panels"]}
    assert {"table", "state-timeline", "bargauge", "timeseries"} <= kinds


def test_grafana_dashboard_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    import yaml

    provisioned = yaml.safe_load(
        (
            ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
        ).read_text()
    )
    uid = provisioned["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]
    assert dashboard["uid"] == "mcppool"
    assert not dashboard["editable"]
