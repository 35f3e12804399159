"""`make bench`: the whole benchmark suite in one run; writes `bench/results.json` and the
generated part of `docs/benchmarks.md`.

    .venv/bin/python -m bench.run [--quick] [--rounds 3] [--duration 1.5] [--no-others]

One run, on this machine, everything side by side:

1. Throughput and latency at concurrency 1, 16, 64, for an HTTP upstream answering JSON, one
   answering SSE, and a stdio upstream (all the SDK's own `MCPServer`: `tests/upstreams/faulty`):
   direct over a kept session, a fresh session per call (SDK, and raw), through mcppool (REST
   and its MCP endpoint, uvicorn) and through other proxies. Legs alternate (A B C A B C…) over
   `--rounds` rounds; medians are reported. CPU per call of every process under test comes from
   `/proc`, the load generator's own CPU from `time.process_time`.
2. daphne against uvicorn serving the same app (REST, concurrency 1 and 16).
3. A py-spy profile of the gateway during the concurrency-16 REST run.
4. RSS with 0, 100 and 1000 idle MCP sessions: mcppool and the other proxies.
5. Subprocesses: the runtime in-process (`bench.runtime_bench`), live balancing
   (`bench.live_balancing`), health checks at 1000 servers (`bench.health_scale`), the `mcppool`
   command's start-up CPU (`bench.cli_startup`), and the other engineers' scripts when present
   (`simulate_balancing`, `failure_detection`, `api_overhead`, `metrics_cost`, `auth_cost`,
   `instructions`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import gateway as gw
from bench import loadgen, memory, other_proxies, procfs, ratios, report
from bench.other_proxies import Proxy, Upstream
from bench.stats import median, ratio
from tests.upstreams import procs
from tests.upstreams.procs import ROOT, UpstreamProcess

BENCH = ROOT / "bench"
RESULTS = BENCH / "results.json"
DOCS = ROOT / "docs" / "benchmarks.md"
CONCURRENCY = (1, 16, 64)
KINDS = ("http-json", "http-sse", "stdio")
# Others' scripts: (module, arguments, seconds allowed, whether their output goes into our part
# of the docs). `{json}` becomes a temporary path, so a shortened run never overwrites the JSON
# their authors committed; api_overhead writes its own docs section and JSON, as its author meant.
EXTRA_SCRIPTS: tuple[tuple[str, list[str], float, bool], ...] = (
    ("simulate_balancing", ["--json", "{json}"], 180, True),
    ("failure_detection", ["--quick", "--json", "{json}"], 180, True),
    ("api_overhead", ["--duration", "1"], 240, False),
    ("metrics_cost", [], 120, True),
    ("tracing_cost", ["--duration", "1", "--json", "{json}", "--no-docs"], 300, True),
    ("auth_cost", ["--json", "{json}"], 120, True),
    # mcppool and the floor profiled under the lean and the SDK client (py-spy)
    ("profile_clients", ["--seconds", "4", "--json", "{json}", "--no-docs"], 240, True),
    # mcppool's own Python per call, and per part of the call path, without the network
    ("hot_path", ["--parts", "--json", "{json}"], 300, True),
    # the gateway's instructions per call against main before issues 12 and 20 (valgrind)
    ("instructions", ["--json", "{json}", "--no-docs"], 1500, True),
    # a stdio session's call forwarded to its owner process over Redis (needs REDIS_URL)
    ("scale_out", ["--calls", "300"], 240, True),
    ("session_token", [], 60, True),
    # calls/s through HAProxy with one and with two web processes (needs haproxy and REDIS_URL)
    ("web_processes", ["--duration", "2", "--json", "{json}", "--no-docs"], 240, True),
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- subjects


@dataclass
class Leg:
    """One way of making calls, against one upstream kind."""

    name: str  # e.g. "mcppool-rest"
    kind: str  # upstream kind
    target: loadgen.Target
    watch: dict[str, int]  # "subject" (process under test) and "upstream" pids
    slow: bool = False  # fresh session per call: shorter runs are enough
    only: tuple[int, ...] = ()  # run at these concurrencies only (empty: all)
    child_of: int = 0  # also watch this process's stdio child, as "child" (found after warm-up)


@dataclass
class Bench:
    args: argparse.Namespace
    started: float = field(default_factory=time.monotonic)
    processes: list[UpstreamProcess] = field(default_factory=list)
    gateways: list[gw.Gateway] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stdio_targets: list[loadgen.StdioDirectTarget] = field(default_factory=list)

    def stop_all(self) -> None:
        for g in self.gateways:
            g.stop()
        for p in self.processes:
            p.stop()

    def upstream(self, kind: str) -> UpstreamProcess:
        process = procs.start_faulty_http(name=f"bench-{kind}", json_response=kind == "http-json")
        self.processes.append(process)
        return process

    def floor(self, upstream: Upstream) -> UpstreamProcess:
        """The bare forwarder (bench/floor.py) in front of `upstream`."""
        command = [sys.executable, "-m", "bench.floor"]
        name = "floor-stdio" if upstream.stdio else "floor-http"
        process = procs._start_http(
            name,
            lambda port: (
                [*command, "--port", str(port)]
                + (
                    ["--", *other_proxies.STDIO_UPSTREAM]
                    if upstream.stdio
                    else ["--upstream", upstream.url]
                )
            ),
        )
        self.processes.append(process)
        return process

    def proxy(self, proxy: Proxy, upstream: Upstream) -> UpstreamProcess | None:
        if not other_proxies.ensure_venv(proxy, log):
            self.notes.append(f"{proxy.name}: its virtualenv could not be installed; not measured")
            return None
        try:
            process = other_proxies.start(proxy, upstream)
        except RuntimeError as exc:
            self.notes.append(f"{proxy.name}: did not start ({str(exc).splitlines()[0]})")
            return None
        self.processes.append(process)
        self.versions.setdefault(proxy.name, proxy.version())
        return process


def pools(upstreams: dict[str, UpstreamProcess]) -> list[dict[str, Any]]:
    """One pool per upstream kind, one server each, default knobs."""
    stdio = other_proxies.STDIO_UPSTREAM
    return [
        {
            "slug": "json",
            "name": "json",
            "servers": [
                {
                    "name": "json-1",
                    "transport": "streamable_http",
                    "url": upstreams["http-json"].url,
                }
            ],
        },
        {
            "slug": "sse",
            "name": "sse",
            "servers": [
                {"name": "sse-1", "transport": "streamable_http", "url": upstreams["http-sse"].url}
            ],
        },
        {
            "slug": "stdio",
            "name": "stdio",
            "servers": [
                {
                    "name": "stdio-1",
                    "transport": "stdio",
                    "command": stdio[0],
                    "args": list(stdio[1:]),
                    "cwd": str(ROOT),
                }
            ],
        },
    ]


POOL_OF = {"http-json": "json", "http-sse": "sse", "stdio": "stdio"}


SDK = "@sdk"  # suffix of a leg driven by the mcp SDK's client instead of the lean one


def legs(bench: Bench, upstreams: dict[str, UpstreamProcess], gateway: gw.Gateway) -> list[Leg]:
    out: list[Leg] = []
    auth = (("Authorization", f"Bearer {gateway.token}"),)
    sdk_only = (ratios.CPU_CONCURRENCY,)  # the SDK client costs ~3 ms a call: CPU legs only
    for kind in KINDS:
        up = upstreams.get(kind)
        up_watch = {"upstream": up.pid} if up else {}
        stdio = kind == "stdio"
        if up is not None:
            out.append(Leg("direct", kind, loadgen.McpTarget(up.url, name="direct"), up_watch))
            if kind == "http-json":
                out.append(Leg("direct" + SDK, kind, loadgen.SdkTarget(up.url), up_watch,
                               only=sdk_only))  # fmt: skip
        else:
            direct = loadgen.StdioDirectTarget(other_proxies.STDIO_UPSTREAM)
            bench.stdio_targets.append(direct)
            out.append(Leg("direct", kind, direct, {}))
        if up is not None and kind == "http-json":
            out.append(Leg("fresh-sdk", kind, loadgen.FreshSdkTarget(up.url), up_watch, slow=True))
            out.append(Leg("fresh-raw", kind, loadgen.FreshRawTarget(up.url), up_watch, slow=True))
        subject = {"subject": gateway.pid, **up_watch}
        child = gateway.pid if stdio else 0
        pool = POOL_OF[kind]
        out += [
            Leg("mcppool-rest", kind, loadgen.RestTarget(gateway.rest_url(pool), gateway.token),
                subject, child_of=child),
            Leg("mcppool-mcp", kind,
                loadgen.McpTarget(gateway.mcp_url(pool), headers=auth, name="mcppool-mcp"),
                subject, child_of=child),
            Leg("mcppool-mcp" + SDK, kind, loadgen.SdkTarget(gateway.mcp_url(pool), headers=auth),
                subject, only=sdk_only, child_of=child),
        ]  # fmt: skip
        upstream = Upstream(up.url) if up is not None else Upstream()
        if kind != "http-sse":
            floor = bench.floor(upstream)
            base = f"http://127.0.0.1:{floor.port}"
            watch = {"subject": floor.pid, **up_watch}
            child = floor.pid if stdio else 0
            out += [
                Leg("floor-rest", kind, loadgen.RestTarget(f"{base}/rest/echo", "-"), watch,
                    child_of=child),
                Leg("floor-mcp", kind, loadgen.McpTarget(f"{base}/mcp", name="floor-mcp"), watch,
                    child_of=child),
                Leg("floor-mcp" + SDK, kind, loadgen.SdkTarget(f"{base}/mcp"), watch,
                    only=sdk_only, child_of=child),
            ]  # fmt: skip
        if bench.args.no_others:
            continue
        for proxy in other_proxies.ALL:
            if not proxy.supports(upstream):
                continue
            if kind == "http-sse" and proxy is not other_proxies.SDK_PROXY:
                continue  # the SSE column compares mcppool with the one naive proxy
            process = bench.proxy(proxy, upstream)
            if process is None:
                continue
            address = other_proxies.url(proxy, process)
            target = loadgen.McpTarget(address, name=proxy.name)
            slow = proxy is other_proxies.SDK_PROXY_PER_CALL
            watch = {"subject": process.pid, **up_watch}
            child = process.pid if stdio else 0
            out.append(Leg(proxy.name, kind, target, watch, slow, child_of=child))
            if not slow and kind != "http-sse":
                out.append(Leg(proxy.name + SDK, kind, loadgen.SdkTarget(address), watch,
                               only=sdk_only, child_of=child))  # fmt: skip
    return out


def stdio_child(pid: int) -> int | None:
    """The stdio upstream `pid` spawned (possibly through a shell or `node`'s wrapper)."""
    todo = [pid]
    while todo:
        for kid in procfs.children(todo.pop()):
            with contextlib.suppress(OSError):
                if b"tests.upstreams.faulty" in Path(f"/proc/{kid}/cmdline").read_bytes():
                    return kid
            todo.append(kid)
    return None


# ---------------------------------------------------------------- measuring


async def throughput(bench: Bench, all_legs: list[Leg]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    args = bench.args
    # One untimed pass first: imports, JIT-less warm caches, the gateway's first sessions.
    for leg in all_legs:
        await loadgen.run(leg.target, concurrency=4, duration=0.3, warmup_calls=2)
        if leg.child_of:
            child = stdio_child(leg.child_of)
            if child is None:
                bench.notes.append(f"{leg.kind}/{leg.name}: no stdio child found to watch")
            else:
                leg.watch = {**leg.watch, "child": child}
    for round_ in range(args.rounds):
        log(f"throughput round {round_ + 1}/{args.rounds}")
        for kind in KINDS:
            for concurrency in args.concurrency:
                for leg in _rotated([x for x in all_legs if x.kind == kind], round_):
                    if leg.slow and concurrency > 16:
                        continue
                    if leg.only and concurrency not in leg.only:
                        continue  # 64 sessions opened at once measure the upstream's handshake
                    duration = args.duration * (0.6 if leg.slow else 1.0)
                    result = await loadgen.run(
                        leg.target,
                        concurrency=concurrency,
                        duration=duration,
                        # A session per call costs ~50 ms: one warm-up call per worker is plenty.
                        warmup_calls=1 if leg.slow else 3,
                        watch=leg.watch,
                    )
                    rows.append(
                        {"kind": kind, "leg": leg.name, "round": round_, **result.as_dict()}
                    )
    return rows


def _rotated(items: list[Leg], shift: int) -> list[Leg]:
    if not items:
        return items
    shift %= len(items)
    return items[shift:] + items[:shift]


async def servers_compared(
    bench: Bench, uvicorn: gw.Gateway, daphne: gw.Gateway
) -> list[dict[str, Any]]:
    """daphne vs uvicorn, the same app and database, REST calls, alternating."""
    rows = []
    for round_ in range(bench.args.rounds):
        for concurrency in (1, 16):
            pair = (uvicorn, daphne) if round_ % 2 == 0 else (daphne, uvicorn)
            for g in pair:
                target = loadgen.RestTarget(g.rest_url("json"), g.token, name=g.server)
                result = await loadgen.run(
                    target,
                    concurrency=concurrency,
                    duration=bench.args.duration,
                    watch={"subject": g.pid},
                )
                rows.append({"server": g.server, "round": round_, **result.as_dict()})
    return rows


def profile(
    bench: Bench, pid: int, target: loadgen.Target, name: str, seconds: float
) -> dict[str, Any]:
    """py-spy on `pid` while `target` is called at concurrency 16: bench/profile-<name>.svg and
    .txt, the top costs, and the CPU per call measured meanwhile (to turn shares into ms)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        bench.notes.append("py-spy is not installed: no profile")
        return {}
    svg = BENCH / f"profile-{name}.svg"
    raw = BENCH / f"profile-{name}.txt"
    base = [py_spy, "record", "--pid", str(pid), "--duration", str(math.ceil(seconds)),
            "--rate", "250", "--nonblocking"]  # fmt: skip
    cpu: list[float] = []
    for fmt, path in (("flamegraph", svg), ("raw", raw)):
        spy = subprocess.Popen(
            [*base, "--format", fmt, "--output", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
        with asyncio.Runner(loop_factory=loadgen.new_event_loop) as runner:
            result = runner.run(
                loadgen.run(target, concurrency=16, duration=seconds + 1, watch={"subject": pid})
            )
        cpu.append(result.cpu_ms_per_call["subject"])
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            bench.notes.append(f"py-spy failed: {err.decode(errors='replace')[-300:]}")
            return {}
    top = report.top_costs(raw.read_text())
    return {
        "svg": str(svg.relative_to(ROOT)),
        "collapsed": str(raw.relative_to(ROOT)),
        "cpu_ms_per_call": median(cpu),
        **top,
    }


async def idle_memory(
    bench: Bench,
    var_dir: Path,
    token: str,
    upstreams: dict[str, UpstreamProcess],
    steps: tuple[int, ...],
) -> list[dict[str, Any]]:
    rows = []
    fresh = gw.start(var_dir, token, ready_path="/api/v1/pools/json/tools/echo/call")
    try:
        rows.append(
            await memory.measure(
                "mcppool (uvicorn)",
                fresh.pid,
                fresh.mcp_url("json"),
                [("Authorization", f"Bearer {token}")],
                steps,
            )
        )
    finally:
        fresh.stop()
    if bench.args.no_others:
        return rows
    for proxy, upstream in (
        (other_proxies.SDK_PROXY, Upstream(upstreams["http-json"].url)),
        (other_proxies.MCP_PROXY, Upstream()),
    ):
        if not other_proxies.ensure_venv(proxy, log):
            continue
        process = other_proxies.start(proxy, upstream)
        try:
            name = f"{proxy.name} ({'stdio' if upstream.stdio else 'HTTP'} upstream)"
            url = other_proxies.url(proxy, process)
            rows.append(await memory.measure(name, process.pid, url, (), steps))
        except Exception as exc:  # a proxy that falls over under 1000 sessions is a finding
            bench.notes.append(f"{proxy.name}: idle sessions: {exc}")
        finally:
            process.stop()
    return rows


def run_module(module: str, arguments: list[str], timeout: float) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{module}", *arguments],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s", time.monotonic() - started
    return (
        done.returncode,
        done.stdout + (done.stderr[-3000:] if done.returncode else ""),
        time.monotonic() - started,
    )


def extras(bench: Bench) -> list[dict[str, Any]]:
    """The other engineers' benchmark scripts, when they exist: their command and output."""
    out = []
    with tempfile.TemporaryDirectory(prefix="mcppool-bench-") as scratch:
        for module, arguments, timeout, show in EXTRA_SCRIPTS:
            if not (BENCH / f"{module}.py").exists():
                continue
            json_path = Path(scratch) / f"{module}.json"
            argv = [a.replace("{json}", str(json_path)) for a in arguments]
            log(f"bench.{module}")
            code, output, seconds = run_module(module, argv, timeout)
            data = None
            if json_path.exists() and code == 0:
                with contextlib.suppress(ValueError):
                    data = json.loads(json_path.read_text())
            shown = " ".join(a for a in arguments if a != "{json}" and a != "--json")
            out.append(
                {
                    "module": module,
                    "command": f"python -m bench.{module} {shown}".strip(),
                    "exit": code,
                    "seconds": seconds,
                    "output": output if show or code != 0 else "",
                    "json": data,
                }
            )
    return out


def previous_extras(bench: Bench) -> list[dict[str, Any]]:
    """--no-extras: the other scripts' output from the committed results, said to be so (their
    sections in the docs would otherwise vanish from a shortened run)."""
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads(RESULTS.read_text())
        carried: list[dict[str, Any]] = previous.get("extras") or []
        if carried:
            bench.notes.append(
                f"--no-extras: the other scripts' sections are carried over from the run of "
                f"{previous.get('date', '?')}, not measured in this one"
            )
        return carried
    return []


def own_script(module: str, arguments: list[str], timeout: float, bench: Bench) -> dict[str, Any]:
    json_path = Path(tempfile.mkstemp(suffix=".json")[1])
    log(f"bench.{module}")
    code, output, _ = run_module(module, [*arguments, "--json", str(json_path)], timeout)
    try:
        if code != 0:
            bench.notes.append(f"bench.{module} failed: {output[-500:]}")
            return {}
        data: dict[str, Any] = json.loads(json_path.read_text())
        data["command"] = f"python -m bench.{module} {' '.join(arguments)}".strip()
        return data
    finally:
        json_path.unlink(missing_ok=True)


# ---------------------------------------------------------------- summary


def medians(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Median of every number over the rows sharing `keys`."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for group_key, group in groups.items():
        first = group[0]
        merged: dict[str, Any] = dict(zip(keys, group_key, strict=True))
        for name in ("calls_per_s", "p50_ms", "p99_ms", "max_ms", "client_cpu_ms_per_call"):
            merged[name] = median(r[name] for r in group)
        for watched in first["cpu_ms_per_call"]:
            merged[f"{watched}_cpu_ms_per_call"] = median(
                r["cpu_ms_per_call"].get(watched, math.nan) for r in group
            )
        merged["calls"] = sum(r["calls"] for r in group)
        merged["errors"] = sum(r["errors"] for r in group)
        merged["rounds"] = len(group)
        out.append(merged)
    return out


def headline(
    table: list[dict[str, Any]],
    servers: list[dict[str, Any]],
    memory_rows: list[dict[str, Any]],
    balancing: dict[str, Any],
) -> dict[str, Any]:
    """The machine-readable results the README and the issue's targets refer to."""

    def cell(kind: str, leg: str, concurrency: int, name: str) -> float:
        for row in table:
            if (row["kind"], row["leg"], row["concurrency"]) == (kind, leg, concurrency):
                return float(row.get(name, math.nan))
        return math.nan

    # Only real third-party proxies count: bench/sdk_proxy.py is a reference, shown beside them.
    proxies = [p.name for p in other_proxies.REAL]
    best_http = min(
        (cell("http-json", p, 16, "subject_cpu_ms_per_call") for p in proxies),
        key=lambda v: math.inf if math.isnan(v) else v,
        default=math.nan,
    )
    best_stdio = min(
        (cell("stdio", p, 16, "subject_cpu_ms_per_call") for p in proxies),
        key=lambda v: math.inf if math.isnan(v) else v,
        default=math.nan,
    )
    gw_http = cell("http-json", "mcppool-rest", 16, "subject_cpu_ms_per_call")
    gw_stdio = cell("stdio", "mcppool-rest", 16, "subject_cpu_ms_per_call")
    mcppool_memory = next((m for m in memory_rows if m["subject"].startswith("mcppool")), {})
    return {
        "gateway_cpu_ms_per_call_http": gw_http,
        "gateway_cpu_ms_per_call_stdio": gw_stdio,
        "gateway_cpu_ms_per_call_http_mcp_endpoint": cell(
            "http-json", "mcppool-mcp", 16, "subject_cpu_ms_per_call"
        ),
        "best_other_proxy_cpu_ms_per_call": min(
            (v for v in (best_http, best_stdio) if not math.isnan(v)), default=math.nan
        ),
        "best_other_proxy_cpu_ms_per_call_http": best_http,
        "best_other_proxy_cpu_ms_per_call_stdio": best_stdio,
        "other_proxy_vs_gateway_cpu_http": ratio(best_http, gw_http),
        "other_proxy_vs_gateway_cpu_stdio": ratio(best_stdio, gw_stdio),
        "throughput_ratio_vs_direct_c16": ratio(
            cell("http-json", "mcppool-rest", 16, "calls_per_s"),
            cell("http-json", "direct", 16, "calls_per_s"),
        ),
        "throughput_ratio_vs_direct_c16_mcp_endpoint": ratio(
            cell("http-json", "mcppool-mcp", 16, "calls_per_s"),
            cell("http-json", "direct", 16, "calls_per_s"),
        ),
        "pooled_vs_fresh_ratio": ratio(
            cell("http-json", "mcppool-rest", 16, "calls_per_s"),
            cell("http-json", "fresh-sdk", 16, "calls_per_s"),
        ),
        "pooled_vs_fresh_raw_ratio": ratio(
            cell("http-json", "mcppool-rest", 16, "calls_per_s"),
            cell("http-json", "fresh-raw", 16, "calls_per_s"),
        ),
        "slow_replica_p99_ratio": balancing.get("slow_replica_p99_ratio", math.nan),
        "idle_1000_sessions_rss_mb": mcppool_memory.get("above_empty_1000_mb", math.nan),
        "added_p50_ms_c1": cell("http-json", "mcppool-rest", 1, "p50_ms")
        - cell("http-json", "direct", 1, "p50_ms"),
        "added_p50_ms_c1_mcp_endpoint": cell("http-json", "mcppool-mcp", 1, "p50_ms")
        - cell("http-json", "direct", 1, "p50_ms"),
        "loadgen_cpu_ms_per_call_c16": cell(
            "http-json", "mcppool-rest", 16, "client_cpu_ms_per_call"
        ),
        "asgi_server": _server_verdict(servers),
        **ratios.headline(table, proxies),
    }


def _server_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for server in ("uvicorn", "daphne"):
        for concurrency in (1, 16):
            mine = [r for r in rows if r["server"] == server and r["concurrency"] == concurrency]
            out[f"{server}_c{concurrency}_cpu_ms_per_call"] = median(
                r["cpu_ms_per_call"]["subject"] for r in mine
            )
            out[f"{server}_c{concurrency}_p99_ms"] = median(r["p99_ms"] for r in mine)
            out[f"{server}_c{concurrency}_calls_per_s"] = median(r["calls_per_s"] for r in mine)
    return out


def machine() -> dict[str, Any]:
    def version(package: str) -> str:
        import importlib.metadata

        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "—"

    return {
        "cpus": os.cpu_count(),
        "cpu_model": procfs.cpu_model(),
        "memory_gb": round(procfs.memory_total_gb(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
        "packages": {
            p: version(p)
            for p in (
                "mcp",
                "django",
                "channels",
                "uvicorn",
                "daphne",
                "uvloop",
                "httptools",
                "aiohttp",
                "orjson",
                "py-spy",
            )
        },
    }


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 1 min), no docs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per measured leg")
    parser.add_argument("--no-others", action="store_true", help="skip the other proxies")
    parser.add_argument("--no-extras", action="store_true", help="skip the other scripts")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=list(CONCURRENCY),
        help="concurrency levels (1 and 16 are the ones the ratios read)",
    )
    args = parser.parse_args(argv)
    args.concurrency = tuple(args.concurrency)
    if args.quick:
        args.rounds, args.duration, args.concurrency = 1, 0.5, (1, 16)
    bench = Bench(args)
    info = machine()
    log(f"{info['cpus']} × {info['cpu_model']}, load {info['load_average_at_start']}")
    results: dict[str, Any] = {
        "machine": info,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        upstreams = {kind: bench.upstream(kind) for kind in ("http-json", "http-sse")}
        log("preparing mcppool (migrate, pools, API key)")
        var_dir, token = gw.prepare(pools(upstreams))
        uvicorn = gw.start(var_dir, token, ready_path="/api/v1/pools/json/tools/echo/call")
        bench.gateways.append(uvicorn)
        all_legs = legs(bench, upstreams, uvicorn)
        log(f"{len(all_legs)} legs: " + ", ".join(sorted({f"{x.kind}/{x.name}" for x in all_legs})))
        with asyncio.Runner(loop_factory=loadgen.new_event_loop) as runner:
            rows = runner.run(throughput(bench, all_legs))
            for target in bench.stdio_targets:
                runner.run(target.stop())
            log("daphne vs uvicorn")
            daphne = gw.start(
                var_dir, token, server="daphne", ready_path="/api/v1/pools/json/tools/echo/call"
            )
            bench.gateways.append(daphne)
            servers = runner.run(servers_compared(bench, uvicorn, daphne))
            daphne.stop()
        log("profile (py-spy): mcppool and the floor, REST, JSON upstream")
        seconds = 2.0 if args.quick else 4.0
        rest = loadgen.RestTarget(uvicorn.rest_url("json"), uvicorn.token)
        results["profile"] = profile(bench, uvicorn.pid, rest, "rest", seconds)
        floor = next(p for p in bench.processes if p.name == "floor-http")
        floor_rest = loadgen.RestTarget(f"http://127.0.0.1:{floor.port}/rest/echo", "-")
        results["profile_floor"] = profile(bench, floor.pid, floor_rest, "floor-rest", seconds)
        for p in bench.processes:  # proxies out of the way before memory is measured
            if p.name not in ("bench-http-json", "bench-http-sse"):
                p.stop()
        log("idle sessions memory")
        with asyncio.Runner(loop_factory=loadgen.new_event_loop) as runner:
            steps = (10, 100) if args.quick else memory.STEPS
            memory_rows = runner.run(idle_memory(bench, var_dir, token, upstreams, steps))
    finally:
        bench.stop_all()
    rounds = ["--rounds", "1"] if args.quick else ["--rounds", str(args.rounds)]
    quick = [*rounds, "--duration", "0.5" if args.quick else "1"]
    runtime = own_script(
        "runtime_bench", [*quick, *(["--sessions", "10", "100"] if args.quick else [])], 300, bench
    )
    balancing = own_script(
        "live_balancing",
        [*rounds, "--duration", "1" if args.quick else "2.5"],
        300,
        bench,
    )
    cli = own_script("cli_startup", ["--runs", "3" if args.quick else "5"], 300, bench)
    extra = [] if args.quick else previous_extras(bench) if args.no_extras else extras(bench)
    small = ["--servers", "200", "--pools", "20", "--measure", "10"] if args.quick else []
    health = own_script("health_scale", small, 600, bench)
    table = medians(rows, ("kind", "leg", "concurrency"))
    results.update(headline(table, servers, memory_rows, balancing))
    results.update({k: v for k, v in cli.items() if k.startswith("cli_cpu_ms_")})
    results.update({k: v for k, v in health.items() if k.startswith("health_scale_")})
    results.update(
        {
            "seconds": time.monotonic() - bench.started,
            "settings": {
                "rounds": args.rounds,
                "duration_s": args.duration,
                "concurrency": list(args.concurrency),
                "quick": args.quick,
            },
            "versions": bench.versions,
            "notes": bench.notes,
            "throughput": table,
            "asgi_servers_runs": servers,
            "idle_sessions": memory_rows,
            "runtime": runtime,
            "balancing": balancing,
            "cli_startup": cli,
            "health_scale": health,
            "extras": extra,
            "runs": rows,
        }
    )
    out = Path(tempfile.gettempdir()) / "mcppool-bench-quick.json" if args.quick else RESULTS
    out.write_text(json.dumps(_finite(results), indent=1, default=_json_default) + "\n")
    log(f"wrote {out}")
    if not args.quick:
        report.write_docs(DOCS, results, extra)
        log(f"wrote {DOCS}")
    for line in report.summary_lines(results):
        print(line)
    log(f"done in {time.monotonic() - bench.started:.0f} s")
    return 0


def _json_default(value: object) -> object:
    return str(value)


def _finite(value: Any) -> Any:
    """NaN (a leg that did not run) as null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
