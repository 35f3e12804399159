"""The issue-19 ratios, from the medians table of one run: mcppool against the floor (a bare
forwarder) and against the real third-party proxies, per path, and the worst of each.

A *path* is a client kind (`lean`: bench.loadgen's raw HTTP client; `sdk`: the mcp SDK's client),
an mcppool endpoint (`rest`, `mcp`) and an upstream kind (`http-json`, `stdio`). Leg names in the
table: `mcppool-rest`, `floor-mcp`, `fastmcp`… with `@sdk` appended when the SDK client drove it.

* `floor`: gateway CPU per call ÷ floor CPU per call (target ≤ 1.3), and at concurrency 1 the
  p50 each adds over calling the upstream directly, gateway's ÷ floor's (target ≤ 1.5).
* `real_peer`: best real peer's CPU per call ÷ mcppool's (targets ≥ 8 HTTP, ≥ 6 stdio), the
  process under test only and, for stdio, with the stdio child it spawned included.

Pure functions over plain rows: no processes, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

CLIENTS: Final = ("lean", "sdk")
ENDPOINTS: Final = ("rest", "mcp")
KINDS: Final = ("http-json", "stdio")
CPU_CONCURRENCY: Final = 16
LATENCY_CONCURRENCY: Final = 1

Row = Mapping[str, Any]


def leg_name(base: str, client: str) -> str:
    return base if client == "lean" else f"{base}@{client}"


def paths() -> list[tuple[str, str, str]]:
    """(client, endpoint, kind) of every path measured; the SDK client speaks MCP only."""
    return [
        (client, endpoint, kind)
        for client in CLIENTS
        for endpoint in ENDPOINTS
        for kind in KINDS
        if not (client == "sdk" and endpoint == "rest")
    ]


def cell(table: Iterable[Row], kind: str, leg: str, concurrency: int, name: str) -> float:
    for row in table:
        if (row["kind"], row["leg"], row["concurrency"]) == (kind, leg, concurrency):
            value = row.get(name)
            return math.nan if value is None else float(value)
    return math.nan


def divide(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return math.nan
    return a / b


def worst(values: Iterable[float], *, largest: bool) -> float:
    """The worst finite value: the largest (a cost ratio) or the smallest (an advantage)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan
    return max(finite) if largest else min(finite)


def floor_ratios(table: Sequence[Row]) -> dict[str, dict[str, float]]:
    """Per path: mcppool's and the floor's CPU per call and added p50, and their ratios."""
    out: dict[str, dict[str, float]] = {}
    for client, endpoint, kind in paths():
        gateway = leg_name(f"mcppool-{endpoint}", client)
        floor = leg_name(f"floor-{endpoint}", client)
        direct = leg_name("direct", client)
        gw_cpu = cell(table, kind, gateway, CPU_CONCURRENCY, "subject_cpu_ms_per_call")
        floor_cpu = cell(table, kind, floor, CPU_CONCURRENCY, "subject_cpu_ms_per_call")
        base = cell(table, kind, direct, LATENCY_CONCURRENCY, "p50_ms")
        gw_added = cell(table, kind, gateway, LATENCY_CONCURRENCY, "p50_ms") - base
        floor_added = cell(table, kind, floor, LATENCY_CONCURRENCY, "p50_ms") - base
        out[f"{client}/{endpoint}/{kind}"] = {
            "gateway_cpu_ms_per_call": gw_cpu,
            "floor_cpu_ms_per_call": floor_cpu,
            "cpu_ratio": divide(gw_cpu, floor_cpu),
            "gateway_added_p50_ms_c1": gw_added,
            "floor_added_p50_ms_c1": floor_added,
            # An added p50 at or under zero is noise: no ratio is honest then.
            "added_p50_ratio": divide(gw_added, floor_added) if gw_added > 0 else math.nan,
        }
    return out


def peer_ratios(table: Sequence[Row], peers: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per path: the best (cheapest) real peer on the same upstream and client, and its CPU per
    call ÷ mcppool's; for stdio also with each side's stdio child added."""
    out: dict[str, dict[str, Any]] = {}
    for client, endpoint, kind in paths():
        gateway = leg_name(f"mcppool-{endpoint}", client)
        mine = cell(table, kind, gateway, CPU_CONCURRENCY, "subject_cpu_ms_per_call")
        mine_child = cell(table, kind, gateway, CPU_CONCURRENCY, "child_cpu_ms_per_call")
        measured = {
            peer: (
                cell(
                    table, kind, leg_name(peer, client), CPU_CONCURRENCY, "subject_cpu_ms_per_call"
                ),
                cell(table, kind, leg_name(peer, client), CPU_CONCURRENCY, "child_cpu_ms_per_call"),
            )
            for peer in peers
        }
        measured = {p: c for p, c in measured.items() if not math.isnan(c[0])}
        if not measured:
            continue
        best = min(measured, key=lambda p: measured[p][0])
        entry: dict[str, Any] = {
            "best_peer": best,
            "best_peer_cpu_ms_per_call": measured[best][0],
            "gateway_cpu_ms_per_call": mine,
            "ratio": divide(measured[best][0], mine),
        }
        if kind == "stdio":
            with_child = {p: c[0] + c[1] for p, c in measured.items()}
            best_total = min(with_child, key=lambda p: with_child[p])
            entry["best_peer_with_child"] = best_total
            entry["ratio_with_child"] = divide(with_child[best_total], mine + mine_child)
        out[f"{client}/{endpoint}/{kind}"] = entry
    return out


def headline(table: Sequence[Row], peers: Sequence[str]) -> dict[str, Any]:
    """The keys `bench/results.json` carries for issue 19."""
    floors = floor_ratios(table)
    others = peer_ratios(table, peers)

    def peer_worst(kind: str, key: str) -> float:
        return worst(
            (v.get(key, math.nan) for p, v in others.items() if p.endswith(f"/{kind}")),
            largest=False,
        )

    return {
        "floor_cpu_ratio": worst((v["cpu_ratio"] for v in floors.values()), largest=True),
        "floor_added_p50_ratio": worst(
            (v["added_p50_ratio"] for v in floors.values()), largest=True
        ),
        "real_peer_cpu_ratio_http": peer_worst("http-json", "ratio"),
        "real_peer_cpu_ratio_stdio": peer_worst("stdio", "ratio"),
        "real_peer_cpu_ratio_stdio_with_child": peer_worst("stdio", "ratio_with_child"),
        "floor_ratios": floors,
        "real_peer_ratios": others,
        "targets": {
            "floor_cpu_ratio_max": 1.3,
            "floor_added_p50_ratio_max": 1.5,
            "real_peer_cpu_ratio_http_min": 8.0,
            "real_peer_cpu_ratio_stdio_min": 6.0,
        },
    }
