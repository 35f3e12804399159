"""What traces and the audit log cost a tool call: the same gateway with them off and on.

    .venv/bin/python -m bench.tracing_cost [--duration 2] [--rounds 3] [--json PATH] [--no-docs]

Four mcppool processes under uvicorn on one prepared database, one faulty upstream answering
`application/json`, and an OTLP/HTTP receiver (the tests' own, in a thread of this process):

* **off** — no `OTEL_*`, no audit log: today's path (the observer is None);
* **traces 100 %** — `OTEL_EXPORTER_OTLP_ENDPOINT` set, `OTEL_TRACES_SAMPLER=parentbased_always_on`;
* **traces 1 %** — `OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.01`;
* **audit log** — `MCPPOOL_AUDIT_LOG=1`, a JSON line per call (to the process's stdout file).

Rounds interleave the four, so a burst of other work lands on all alike; each row is the median
round. Reported: gateway CPU per call (`/proc/<pid>/stat`) and p50/p99, REST and MCP (2026) at
concurrency 16. Writes a section of `docs/benchmarks.md` unless `--no-docs`.
"""

from __future__ import annotations

import argparse
import asyncio
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import gateway as gw
from bench import procfs
from bench.loadgen import McpTarget, RestTarget, RunResult, Target, run, run_on_new_loop
from bench.report import publish, replace_section
from tests.upstreams import procs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Tracing and audit cost (`python -m bench.tracing_cost`)"
CONCURRENCY = 16


def modes(endpoint: str) -> dict[str, dict[str, str]]:
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "mcppool-bench",
              "OTEL_BSP_SCHEDULE_DELAY": "200"}  # fmt: skip
    return {
        "off": {},
        "traces 100 %": {**traced, "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
        "traces 1 %": {
            **traced,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
        },
        "audit log": {"MCPPOOL_AUDIT_LOG": "1"},
    }


@contextmanager
def receiver_thread() -> Iterator[tuple[str, list[int]]]:
    """An OTLP/HTTP receiver on its own loop and thread: `(base url, [spans received])`."""
    from tests.observability.receiver import otlp_receiver

    ready = threading.Event()
    box: dict[str, Any] = {}
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        async with otlp_receiver() as receiver:
            box["receiver"] = receiver
            box["stop"] = asyncio.Event()
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    counts: list[int] = []
    try:
        yield box["receiver"].url.removesuffix("/v1/traces"), counts
    finally:
        counts.append(len(box["receiver"].spans))
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(10)


def targets(gateway: gw.Gateway, mode: str) -> list[Target]:
    auth = (("Authorization", f"Bearer {gateway.token}"),)
    return [
        RestTarget(gateway.rest_url("bench"), gateway.token, name=f"REST · {mode}"),
        McpTarget(gateway.mcp_url("bench"), era="modern", headers=auth, name=f"MCP · {mode}"),
    ]


async def measure(duration: float, rounds: int) -> dict[str, Any]:
    upstream = procs.start_faulty_http(name="bench-upstream", json_response=True)
    gateways: dict[str, gw.Gateway] = {}
    try:
        with receiver_thread() as (endpoint, spans):
            server = {"name": "up", "transport": "streamable_http", "url": upstream.url}
            var_dir, token = gw.prepare([{"slug": "bench", "name": "Bench", "servers": [server]}])
            for mode, env in modes(endpoint).items():
                ready = "/api/v1/pools/bench/tools/echo/call"
                gateways[mode] = gw.start(var_dir, token, extra_env=env, ready_path=ready)
            runs: dict[str, list[RunResult]] = {}
            for _ in range(rounds):
                for mode, gateway in gateways.items():
                    watch = {"gateway": gateway.pid}
                    for target in targets(gateway, mode):
                        result = await run(
                            target, concurrency=CONCURRENCY, duration=duration, watch=watch
                        )
                        runs.setdefault(target.name, []).append(result)
        rows = []
        for results in runs.values():
            ordered = sorted(results, key=lambda r: r.cpu_ms_per_call["gateway"])
            row = ordered[len(ordered) // 2]
            rows.append(row.as_dict())
            print(f"{row.target:24} {row.calls_per_s:7.0f}/s  p50 {row.p50_ms:6.3f} ms  "
                  f"p99 {row.p99_ms:6.3f} ms  gateway CPU {row.cpu_ms_per_call['gateway']:.3f} "
                  f"ms/call  errors {row.errors}", flush=True)  # fmt: skip
        return {
            "machine": procfs.machine_brief(),
            "duration_s": duration,
            "rounds": rounds,
            "concurrency": CONCURRENCY,
            "spans_received": spans[0] if spans else 0,
            "rows": rows,
        }
    finally:
        for gateway in gateways.values():
            gateway.stop()
        upstream.stop()


def table(report: dict[str, Any]) -> str:
    rows = {r["target"]: r for r in report["rows"]}
    lines = [
        "| path · mode | calls/s | p50 ms | p99 ms | gateway CPU ms/call | vs off |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        base = rows[name.split(" · ")[0] + " · off"]["cpu_ms_per_call"]["gateway"]
        cpu = r["cpu_ms_per_call"]["gateway"]
        change = "—" if name.endswith("· off") else f"{(cpu / base - 1) * 100:+.0f} %"
        lines.append(f"| {name} | {r['calls_per_s']:.0f} | {r['p50_ms']:.3f} | "
                     f"{r['p99_ms']:.3f} | {cpu:.3f} | {change} |")  # fmt: skip
    return "\n".join(lines)


def write_docs(report: dict[str, Any], text: str) -> None:
    machine = report["machine"]
    intro = " ".join([
        "Four mcppool processes (off, traces at 100 % and 1 % sampling, the audit JSON log) on",
        f"one database and one JSON upstream, concurrency {report['concurrency']}, the median of "
        f"{report['rounds']} interleaved rounds of {report['duration_s']:g} s per row, on "
        f"{machine['cpu']} ({machine['cores']} cores, load average {machine['load_average_1m']} "
        "at the end). Spans went to a local OTLP/HTTP receiver "
        f"({report['spans_received']} received).",
    ])  # fmt: skip
    section = "\n".join([SECTION, "", textwrap.fill(intro, 100), "", table(report), "",
                         textwrap.fill(text, 100, break_on_hyphens=False), ""])  # fmt: skip
    replace_section(DOCS, SECTION, section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--note", default="", help="a sentence under the table in the docs")
    args = parser.parse_args()
    report = run_on_new_loop(measure(args.duration, args.rounds))
    docs = None if args.no_docs else lambda: write_docs(report, args.note)
    publish(report, table(report), args.json, docs)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
