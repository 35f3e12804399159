"""The provisioned Grafana dashboard and alert rules ask only for metrics the service really
exports and documents, and show 0 rather than "No data" when there is no traffic."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
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
    assert {"stat", "table", "state-timeline", "bargauge", "timeseries"} <= kinds


def test_grafana_dashboard_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
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


# ---- alert rules, annotations, headline stats ---------------------------------------------------
ALERTS = ROOT / "deploy" / "grafana" / "provisioning" / "alerting" / "mcppool.yml"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DOCUMENTED = set(
    re.findall(r"^\| `(mcppool_\w+)`", (ROOT / "docs" / "metrics.md").read_text(), re.M)
)
SUFFIX = re.compile(r"_(bucket|sum|count)$")


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _rule_expr(rule: dict[str, Any]) -> str:
    query = next(d for d in rule["data"] if d["datasourceUid"] != "__expr__")
    expr: str = query["model"]["expr"]
    return expr


def test_alert_rules_cover_panic_down_errors_p99_and_ejections(rules: list[dict[str, Any]]) -> None:
    by_metric = {name: rule["title"] for rule in rules for name in METRIC.findall(_rule_expr(rule))}
    for metric in (
        "mcppool_pool_panic",
        "mcppool_server_up",
        "mcppool_calls_total",
        "mcppool_call_duration_seconds_bucket",
        "mcppool_ejections_total",
    ):
        assert metric in by_metric, metric


def test_alert_rules_are_well_formed(rules: list[dict[str, Any]]) -> None:
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    assert len({rule["uid"] for rule in rules}) == len(rules)
    for rule in rules:
        refs = {d["refId"]: d for d in rule["data"]}
        condition = refs[rule["condition"]]["model"]
        assert condition["type"] == "threshold", rule["title"]
        assert condition["expression"] in refs, rule["title"]
        query = refs[condition["expression"]]
        assert query["datasourceUid"] == uid, rule["title"]
        assert query["model"]["instant"], rule["title"]
        assert rule["annotations"]["summary"], rule["title"]
        assert rule["labels"]["severity"], rule["title"]


def test_alert_and_annotation_queries_name_documented_exported_metrics(
    rules: list[dict[str, Any]], dashboard: dict[str, Any], exported: set[str]
) -> None:
    annotations = dashboard["annotations"]["list"]
    exprs = [_rule_expr(rule) for rule in rules] + [a["expr"] for a in annotations]
    for expr in exprs:
        names = METRIC.findall(expr)
        assert names, expr
        for name in names:
            assert SUFFIX.sub("", name) in DOCUMENTED, name
            assert name in exported, name


def test_dashboard_annotates_health_flips_and_config_changes(dashboard: dict[str, Any]) -> None:
    annotations = {a["name"]: a["expr"] for a in dashboard["annotations"]["list"]}
    assert "mcppool_server_up" in annotations["Health flips"]
    assert "mcppool_config_version" in annotations["Config changes"]


def test_dashboard_headline_shows_servers_down_as_a_number(dashboard: dict[str, Any]) -> None:
    [down] = [p for p in dashboard["panels"] if p["title"] == "Servers down"]
    assert down["type"] == "stat"
    assert down["gridPos"]["y"] <= 1  # first thing on the page
    assert down["targets"][0]["expr"].endswith("or vector(0)")  # 0, not "No data", when all up


def test_dashboard_shows_zero_not_no_data_without_traffic(dashboard: dict[str, Any]) -> None:
    for panel in dashboard["panels"]:
        if panel["type"] in ("stat", "timeseries", "bargauge"):
            assert panel["fieldConfig"]["defaults"].get("noValue") == "0", panel["title"]
    for title, expr in queries(dashboard):
        if "outcome!~" in expr and "/" in expr:  # an error ratio: 0/0 would be NaN
            assert "clamp_min(" in expr, title
