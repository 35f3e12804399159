"""The issue-19 ratios: mcppool against the floor and the real peers (no benchmark runs here)."""

from __future__ import annotations

import math
from typing import Any

from bench.ratios import floor_ratios, headline, peer_ratios


def row(kind: str, leg: str, concurrency: int, **values: float) -> dict[str, Any]:
    return {"kind": kind, "leg": leg, "concurrency": concurrency, **values}


def table() -> list[dict[str, Any]]:
    """HTTP: mcppool REST 0.6 ms, floor 0.4 ms (1.5×); MCP 0.5 vs 0.5 (1×). stdio: 0.3 vs 0.3."""
    return [
        row("http-json", "direct", 1, p50_ms=1.0),
        row("http-json", "mcppool-rest", 16, subject_cpu_ms_per_call=0.6),
        row("http-json", "mcppool-rest", 1, p50_ms=2.0),
        row("http-json", "floor-rest", 16, subject_cpu_ms_per_call=0.4),
        row("http-json", "floor-rest", 1, p50_ms=1.5),
        row("http-json", "mcppool-mcp", 16, subject_cpu_ms_per_call=0.5),
        row("http-json", "floor-mcp", 16, subject_cpu_ms_per_call=0.5),
        row("http-json", "fastmcp", 16, subject_cpu_ms_per_call=5.0),
        row("http-json", "sdk-proxy", 16, subject_cpu_ms_per_call=1.0),
        row("stdio", "mcppool-mcp", 16, subject_cpu_ms_per_call=0.3, child_cpu_ms_per_call=0.2),
        row("stdio", "floor-mcp", 16, subject_cpu_ms_per_call=0.3),
        row("stdio", "npm-mcp-proxy", 16, subject_cpu_ms_per_call=2.4, child_cpu_ms_per_call=0.6),
        row("stdio", "fastmcp", 16, subject_cpu_ms_per_call=2.1, child_cpu_ms_per_call=1.9),
    ]


def test_floor_ratio_is_gateway_cpu_over_floor_cpu_and_the_worst_path_is_reported() -> None:
    floors = floor_ratios(table())

    assert math.isclose(floors["lean/rest/http-json"]["cpu_ratio"], 1.5)
    assert math.isclose(floors["lean/mcp/http-json"]["cpu_ratio"], 1.0)
    # Added p50 against direct: 1 ms for mcppool, 0.5 ms for the floor.
    assert math.isclose(floors["lean/rest/http-json"]["added_p50_ratio"], 2.0)
    # A path not measured has no ratio, rather than a made-up one.
    assert math.isnan(floors["sdk/mcp/stdio"]["cpu_ratio"])
    assert math.isclose(headline(table(), ["fastmcp"])["floor_cpu_ratio"], 1.5)


def test_real_peer_ratio_takes_the_cheapest_real_peer_and_ignores_the_reference() -> None:
    peers = peer_ratios(table(), ["fastmcp", "npm-mcp-proxy"])

    http = peers["lean/mcp/http-json"]
    assert http["best_peer"] == "fastmcp"  # sdk-proxy is cheaper but not a real peer
    assert math.isclose(http["ratio"], 10.0)
    stdio = peers["lean/mcp/stdio"]
    assert stdio["best_peer"] == "fastmcp"  # cheapest process alone
    assert math.isclose(stdio["ratio"], 7.0)
    # With the stdio child counted, npm-mcp-proxy is cheaper: 3.0 / (0.3 + 0.2).
    assert stdio["best_peer_with_child"] == "npm-mcp-proxy"
    assert math.isclose(stdio["ratio_with_child"], 6.0)


def test_headline_reports_the_smallest_peer_advantage_over_all_paths() -> None:
    result = headline(table(), ["fastmcp", "npm-mcp-proxy"])

    # REST 5.0 / 0.6 and MCP 5.0 / 0.5: the worse (smaller) one is the headline.
    assert math.isclose(result["real_peer_cpu_ratio_http"], 5.0 / 0.6)
    assert math.isclose(result["real_peer_cpu_ratio_stdio"], 7.0)
    assert math.isclose(result["real_peer_cpu_ratio_stdio_with_child"], 6.0)
