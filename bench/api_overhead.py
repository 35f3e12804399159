"""What the app-facing endpoints add to a tool call: REST and MCP through mcppool vs direct.

A faulty upstream answering `application/json` over HTTP; mcppool under uvicorn in its own
process (SQLite var dir, the pool applied with `mcppool apply`); the lean keep-alive load
generator of `bench.loadgen` at concurrency 1 and 16. Reported per call: the gateway process's
CPU (`/proc/<pid>/stat`, whole request: auth, rate check, pick, forward, metrics), p50/p99, and at
concurrency 1 the p50 added over calling the upstream directly.

    .venv/bin/python -m bench.api_overhead [--duration 3] [--no-docs]

Writes `bench/api_overhead.json` and (unless --no-docs) a section of `docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from bench import gateway as gw
from bench import procfs
from bench.loadgen import McpTarget, RestTarget, RunResult, Target, run, run_on_new_loop
from bench.report import replace_section
from tests.upstreams import procs

ROOT = Path(__file__).resolve().parent.parent
JSON_OUT = ROOT / "bench" / "api_overhead.json"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## App-facing endpoints: REST and MCP vs direct (`python -m bench.api_overhead`)"
TARGET_CPU_MS = 0.5
TARGET_ADDED_P50_MS = 1.0


def targets(upstream: procs.UpstreamProcess, gateway: gw.Gateway) -> list[Target]:
    auth = (("Authorization", f"Bearer {gateway.token}"),)
    return [
        McpTarget(upstream.url, era="modern", name="direct (upstream, MCP 2026)"),
        RestTarget(gateway.rest_url("bench"), gateway.token, name="REST /api/v1/…/call"),
        McpTarget(gateway.mcp_url("bench"), era="modern", headers=auth, name="MCP /mcp/ 2026"),
        McpTarget(gateway.mcp_url("bench"), era="handshake", headers=auth,
                  name="MCP /mcp/ handshake"),
    ]  # fmt: skip


def median_run(results: list[RunResult]) -> RunResult:
    """The round with the median gateway CPU per call."""
    ordered = sorted(results, key=lambda r: r.cpu_ms_per_call["gateway"])
    return ordered[len(ordered) // 2]


async def measure(duration: float, rounds: int) -> dict[str, Any]:
    upstream = procs.start_faulty_http(name="bench-upstream", json_response=True)
    gateway = None
    try:
        server = {"name": "up", "transport": "streamable_http", "url": upstream.url}
        pool = {"slug": "bench", "name": "Bench", "servers": [server]}
        var_dir, token = gw.prepare([pool])
        gateway = gw.start(var_dir, token, ready_path="/api/v1/pools/bench/tools/echo/call")
        watch = {"gateway": gateway.pid, "upstream": upstream.pid}
        rows: list[RunResult] = []
        for concurrency in (1, 16):
            # Rounds interleave the targets, so a burst of other work on the machine lands on
            # all of them alike; each row reports its median round.
            runs: dict[str, list[RunResult]] = {}
            for _ in range(rounds):
                for target in targets(upstream, gateway):
                    result = await run(
                        target, concurrency=concurrency, duration=duration, watch=watch
                    )
                    runs.setdefault(target.name, []).append(result)
            for results in runs.values():
                result = median_run(results)
                rows.append(result)
                print(f"{result.target:28} c={concurrency:<3} {result.calls_per_s:8.0f}/s  "
                      f"p50 {result.p50_ms:6.3f} ms  p99 {result.p99_ms:6.3f} ms  gateway CPU "
                      f"{result.cpu_ms_per_call['gateway']:.3f} ms/call  errors {result.errors}",
                      flush=True)  # fmt: skip
        return {
            "machine": procfs.machine_brief(),
            "duration_s": duration,
            "rounds": rounds,
            "rows": [r.as_dict() for r in rows],
        }
    finally:
        if gateway is not None:
            gateway.stop()
        upstream.stop()


def table(report: dict[str, Any]) -> str:
    rows = report["rows"]
    direct = {r["concurrency"]: r for r in rows if r["target"].startswith("direct")}
    lines = [
        "| path | concurrency | calls/s | p50 ms | p99 ms | added p50 ms | gateway CPU ms/call |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        is_direct = r["target"].startswith("direct")
        added = "—" if is_direct else f"{r['p50_ms'] - direct[r['concurrency']]['p50_ms']:.3f}"
        cpu = "—" if is_direct else f"{r['cpu_ms_per_call']['gateway']:.3f}"
        lines.append(
            f"| {r['target']} | {r['concurrency']} | {r['calls_per_s']:.0f} | {r['p50_ms']:.3f} "
            f"| {r['p99_ms']:.3f} | {added} | {cpu} |"
        )
    return "\n".join(lines)


def verdict(report: dict[str, Any]) -> str:
    rows = [r for r in report["rows"] if not r["target"].startswith("direct")]
    direct = {r["concurrency"]: r for r in report["rows"] if r["target"].startswith("direct")}
    worst_cpu = max(r["cpu_ms_per_call"]["gateway"] for r in rows)
    worst_added = max(r["p50_ms"] - direct[1]["p50_ms"] for r in rows if r["concurrency"] == 1)
    return (
        f"Targets: gateway CPU ≤ {TARGET_CPU_MS} ms per call (worst here {worst_cpu:.3f} ms, "
        f"{'met' if worst_cpu <= TARGET_CPU_MS else 'missed'}); added p50 at concurrency 1 ≤ "
        f"{TARGET_ADDED_P50_MS} ms (worst here {worst_added:.3f} ms, "
        f"{'met' if worst_added <= TARGET_ADDED_P50_MS else 'missed'})."
    )


def write_docs(report: dict[str, Any]) -> None:
    section = "\n".join([
        SECTION,
        "",
        "One faulty upstream answering `application/json` over HTTP; mcppool under uvicorn",
        "(embedded default: SQLite, no Redis); the lean keep-alive load generator; "
        f"the median of {report['rounds']} interleaved rounds of {report['duration_s']:g} s "
        f"per row on {report['machine']['cpu']} "
        f"({report['machine']['cores']} cores, load average "
        f"{report['machine']['load_average_1m']} at the end). Gateway CPU is the",
        "mcppool process's utime+stime per call over the measured window (the whole request:",
        "auth from the in-memory key cache, rate check, balancer pick, forward on a pooled",
        "session, metrics). *Added p50* is against calling the upstream directly.",
        "",
        table(report),
        "",
        verdict(report),
        "",
    ])  # fmt: skip
    replace_section(DOCS, SECTION, section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    report = run_on_new_loop(measure(args.duration, args.rounds))
    print()
    print(table(report))
    print(verdict(report))
    JSON_OUT.write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_docs:
        write_docs(report)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
