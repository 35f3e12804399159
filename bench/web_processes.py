"""Calls/s through HAProxy in front of one and in front of two mcppool web processes.

    .venv/bin/python -m bench.web_processes [--duration 3] [--rounds 3] [--json PATH]
                                            [--redis URL] [--no-docs] [--note TEXT]

Two uvicorn processes of mcppool on one prepared SQLite database and one Redis (a channel prefix
of this run's own), one JSON upstream (the faulty test server over HTTP). Two Debian HAProxies
(round robin, connections kept): one in front of the first process, one in front of both. The
load generator of `bench.loadgen` drives each at concurrency 16 with REST calls and with MCP calls
on kept handshake-era sessions (a session's calls land on both processes: any process serves any
session, issue 17). Rounds interleave the two, so a burst of other work lands on both alike; each
row is the median round by calls/s, and the figure is the ratio two / one per path. Everything
(load generator, HAProxy, the upstream, the web processes) shares this machine's cores, so the
ratio says what a second process adds here, not on a machine with a core per process. Writes a
section of `docs/benchmarks.md` unless `--no-docs`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import textwrap
import uuid
from pathlib import Path
from typing import Any

from bench import gateway as gw
from bench import procfs
from bench.loadgen import McpTarget, RestTarget, RunResult, Target, run, run_on_new_loop
from bench.report import publish, replace_section
from tests.upstreams import procs
from tests.upstreams.procs import UpstreamProcess

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## One and two web processes behind HAProxy (`python -m bench.web_processes`)"
CONCURRENCY = 16
READY = "/api/v1/pools/bench/tools/echo/call"
COUNTS = (1, 2)


def targets(base: str, token: str, count: int) -> list[Target]:
    side = f"{count} web process{'es' if count > 1 else ''}"
    auth = (("Authorization", f"Bearer {token}"),)
    return [
        RestTarget(f"{base}{READY}", token, name=f"REST · {side}"),
        McpTarget(f"{base}/mcp/bench/", headers=auth, name=f"MCP · {side}"),
    ]


async def measure(duration: float, rounds: int, redis: str) -> dict[str, Any]:
    if shutil.which("haproxy") is None:
        raise SystemExit("haproxy is not installed (apt-get install haproxy)")
    upstream = procs.start_faulty_http(name="bench-upstream", json_response=True)
    pools = [{"slug": "bench", "name": "Bench", "servers": [
        {"name": "up", "transport": "streamable_http", "url": upstream.url}]}]  # fmt: skip
    env = {"REDIS_URL": redis, "SECRET_KEY": "bench-only",
           "MCPPOOL_CHANNEL_PREFIX": f"mcppool-bench-{uuid.uuid4().hex[:8]}"}  # fmt: skip
    webs: list[gw.Gateway] = []
    balancers: dict[int, UpstreamProcess] = {}
    runs: dict[str, list[RunResult]] = {}
    try:
        var_dir, token = gw.prepare(pools)
        for i in range(max(COUNTS)):
            webs.append(gw.start(var_dir, token, ready_path=READY, extra_env=env))
            webs[-1].process.name = f"web-{i}"
        for count in COUNTS:
            backends = [web.process for web in webs[:count]]
            balancers[count] = procs.start_haproxy(backends, var_dir, keep_alive=True)
        watch = {web.process.name: web.pid for web in webs}
        for _ in range(rounds):
            for count, balancer in balancers.items():
                base = f"http://127.0.0.1:{balancer.port}"
                for target in targets(base, token, count):
                    result = await run(target, concurrency=CONCURRENCY, duration=duration,
                                       watch={**watch, "haproxy": balancer.pid})  # fmt: skip
                    runs.setdefault(target.name, []).append(result)
    finally:
        for balancer in balancers.values():
            balancer.stop()
        for web in webs:
            web.stop()
        upstream.stop()
    rows = []
    for results in runs.values():
        ordered = sorted(results, key=lambda r: r.calls_per_s)
        row = ordered[len(ordered) // 2]
        rows.append({**row.as_dict(), "rounds_calls_per_s": [r.calls_per_s for r in results]})
        print(f"{row.target:24} {row.calls_per_s:7.0f}/s  p50 {row.p50_ms:6.3f} ms  "
              f"p99 {row.p99_ms:6.3f} ms  errors {row.errors}", flush=True)  # fmt: skip
    return {
        "machine": procfs.machine_brief(),
        "duration_s": duration,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "rows": rows,
        "ratio": ratios(rows),
    }


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Calls/s with two web processes over calls/s with one, per path."""
    rate = {row["target"]: row["calls_per_s"] for row in rows}
    return {
        path: rate[f"{path} · 2 web processes"] / rate[f"{path} · 1 web process"]
        for path in ("REST", "MCP")
        if f"{path} · 1 web process" in rate and f"{path} · 2 web processes" in rate
    }


def table(report: dict[str, Any]) -> str:
    lines = ["| path · behind HAProxy | calls/s (median) | each round | p50 ms | p99 ms | errors "
             "| CPU ms/call web-0 · web-1 · HAProxy |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["rows"]:
        each = ", ".join(f"{value:.0f}" for value in r["rounds_calls_per_s"])
        cpu = " · ".join(f"{r['cpu_ms_per_call'].get(name, 0.0):.3f}"
                         for name in ("web-0", "web-1", "haproxy"))  # fmt: skip
        lines.append(f"| {r['target']} | {r['calls_per_s']:.0f} | {each} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['errors']} | {cpu} |")  # fmt: skip
    lines += ["", "| path | calls/s, two web processes / one |", "|---|---|"]
    lines += [f"| {path} | {ratio:.2f} |" for path, ratio in report["ratio"].items()]
    return "\n".join(lines)


def write_docs(report: dict[str, Any], note: str) -> None:
    machine = report["machine"]
    intro = (
        "One JSON upstream, HAProxy (round robin, connections kept) in front of one and of two "
        f"uvicorn processes of mcppool, concurrency {report['concurrency']}, the median of "
        f"{report['rounds']} interleaved rounds of {report['duration_s']:g} s per row, on "
        f"{machine['cpu']} ({machine['cores']} cores, shared by the load generator, HAProxy, "
        f"the upstream and the web processes; load average {machine['load_average_1m']} at the "
        "end). MCP calls run on kept handshake-era sessions whose calls land on either process; "
        "the CPU columns show where calls were served (web-1 idles behind the one-process HAProxy)."
    )
    parts = [SECTION, "", textwrap.fill(intro, 100), "", table(report), ""]
    if note:
        parts += [textwrap.fill(note, 100, break_on_hyphens=False), ""]
    replace_section(DOCS, SECTION, "\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--note", default="", help="a sentence under the table in the docs")
    args = parser.parse_args()
    report = run_on_new_loop(measure(args.duration, args.rounds, args.redis))
    docs = None if args.no_docs else lambda: write_docs(report, args.note)
    load = f"\n\nload average (1 min) at the end: {report['machine']['load_average_1m']}"
    publish(report, table(report) + load, args.json, docs)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
