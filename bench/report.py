"""Render `bench/results.json` as Markdown into `docs/benchmarks.md`, and name a profile's costs.

`bench.run` owns only the part of `docs/benchmarks.md` between the markers below; everything
outside them (hand-written analysis, sections other engineers add) is kept as it is.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.stats import fmt

INTRO = (
    "# Benchmarks\n\nEverything between the `bench:run` markers is written by `make bench` "
    "(`python -m bench.run`); the rest of this page is kept as it is.\n\n"
)
START = "<!-- bench:run:start -->"
END = "<!-- bench:run:end -->"

# (key in results.json, what it is, target, test: value -> met?)
TARGETS: tuple[tuple[str, str, str, Any], ...] = (
    (
        "floor_cpu_ratio",
        "mcppool CPU per call ÷ the floor's, worst path (c=16)",
        "≤ 1.3×",
        lambda v: v <= 1.3,
    ),
    (
        "floor_added_p50_ratio",
        "p50 mcppool adds over direct ÷ the floor's, worst path (c=1)",
        "≤ 1.5×",
        lambda v: v <= 1.5,
    ),
    (
        "real_peer_cpu_ratio_http",
        "best real HTTP peer's CPU per call ÷ mcppool's, worst path (c=16)",
        "≥ 8×",
        lambda v: v >= 8,
    ),
    (
        "real_peer_cpu_ratio_stdio",
        "best real stdio peer's CPU per call ÷ mcppool's, process only, worst path",
        "≥ 6×",
        lambda v: v >= 6,
    ),
    (
        "real_peer_cpu_ratio_stdio_with_child",
        "the same with each side's stdio child included",
        "—",
        None,
    ),
    (
        "health_scale_checked_within_interval_fraction",
        "share of 1000 servers checked in every 5 s interval (one worker process)",
        "= 1.0",
        lambda v: v >= 1.0,
    ),
    (
        "health_scale_reload_p99_ratio",
        "unrelated pool's p99 during a reload of 1000 servers ÷ before",
        "< 1.2",
        lambda v: v < 1.2,
    ),
    (
        "gateway_cpu_ms_per_call_http",
        "mcppool CPU per forwarded call, HTTP upstream (REST, c=16)",
        "≤ 0.5 ms",
        lambda v: v <= 0.5,
    ),
    (
        "gateway_cpu_ms_per_call_stdio",
        "mcppool CPU per forwarded call, stdio upstream (REST, c=16)",
        "≤ 0.4 ms",
        lambda v: v <= 0.4,
    ),
    (
        "other_proxy_vs_gateway_cpu_http",
        "best other proxy's CPU per call ÷ mcppool's (HTTP)",
        "≥ 4×",
        lambda v: v >= 4,
    ),
    (
        "other_proxy_vs_gateway_cpu_stdio",
        "best other proxy's CPU per call ÷ mcppool's (stdio)",
        "≥ 4×",
        lambda v: v >= 4,
    ),
    (
        "throughput_ratio_vs_direct_c16",
        "calls/s through mcppool ÷ direct, c=16 (JSON upstream)",
        "≥ 0.6",
        lambda v: v >= 0.6,
    ),
    (
        "pooled_vs_fresh_ratio",
        "calls/s through mcppool ÷ a fresh SDK session per call, c=16",
        "≥ 10×",
        lambda v: v >= 10,
    ),
    (
        "slow_replica_p99_ratio",
        "p99 with one 10× slow replica ÷ all-healthy p99 (health_based)",
        "≤ 1.5",
        lambda v: v <= 1.5,
    ),
    (
        "idle_1000_sessions_rss_mb",
        "RSS above the empty process with 1000 idle MCP sessions",
        "< 100 MB",
        lambda v: v < 100,
    ),
    ("added_p50_ms_c1", "p50 added by mcppool at c=1 (REST vs direct)", "—", None),
    (
        "cli_cpu_ms_help",
        "CPU to run `mcppool --help` (start-up of every command)",
        "< 1000 ms",
        lambda v: v < 1000,
    ),
    (
        "cli_cpu_ms_export",
        "CPU to run `mcppool export` (empty SQLite database)",
        "< 1000 ms",
        lambda v: v < 1000,
    ),
)

LEG_NAMES = {
    "direct": "direct, kept session (no gateway)",
    "fresh-sdk": "fresh SDK `Client` per call (no gateway)",
    "fresh-raw": "fresh raw session per call (no gateway)",
    "mcppool-rest": "**mcppool REST**",
    "mcppool-mcp": "**mcppool MCP endpoint**",
    "floor-rest": "floor, REST route (bench/floor.py)",
    "floor-mcp": "floor, MCP endpoint (bench/floor.py)",
    "fastmcp": "FastMCP proxy (PyPI, one reused session)",
    "npm-mcp-proxy": "mcp-proxy (npm)",
    "mcp-proxy": "mcp-proxy (PyPI)",
    "sdk-proxy": "sdk-proxy (reference, written here)",
    "sdk-proxy-per-call": "sdk-proxy, session per call (reference)",
}
KIND_NAMES = {
    "http-json": "HTTP upstream answering JSON",
    "http-sse": "HTTP upstream answering SSE",
    "stdio": "stdio upstream",
}


# ---------------------------------------------------------------- profile


def top_costs(collapsed: str, limit: int = 12) -> dict[str, Any]:
    """Self time by function and by area from py-spy's collapsed stacks ("a;b;c count")."""
    own: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        leaf = _function(frames[-1])
        own[leaf] += samples
        areas[_area(frames)] += samples
    if not total:
        return {"samples": 0, "functions": [], "areas": []}
    return {
        "samples": total,
        "functions": [{"function": f, "share": n / total} for f, n in own.most_common(limit)],
        "areas": [{"area": a, "share": n / total} for a, n in areas.most_common()],
    }


def _function(frame: str) -> str:
    # "name (path/to/module.py:123)" → "name (module.py)"
    match = re.match(r"(.*?) \((.*?):\d+\)$", frame.strip())
    if not match:
        return frame.strip()
    name, path = match.groups()
    parts = path.split("/")
    short = "/".join(parts[-2:]) if "site-packages" not in path else _package_path(path)
    return f"{name} ({short})"


def _package_path(path: str) -> str:
    return path.split("site-packages/", 1)[1]


AREAS = (
    # With uvloop the loop runs in C: py-spy sees only its Python caller, so socket I/O, epoll
    # (waiting included) and the loop's own bookkeeping all land on `Runner.run`.
    (
        "event loop in C (uvloop: epoll, socket I/O; waiting included)",
        ("Runner.run (", "run_until_complete (", "run_forever (", "select (selectors.py"),
    ),
    ("balancing.engine (runtime, sessions, balancer)", ("balancing/engine/",)),
    (
        "balancing hot path (REST / MCP endpoint, router)",
        ("balancing/api/", "balancing/mcpserver/", "balancing/asgi_router"),
    ),
    ("aiohttp (upstream client)", ("aiohttp/",)),
    ("uvicorn / httptools (inbound HTTP)", ("uvicorn/", "httptools")),
    ("Django / Channels", ("django/", "channels/", "asgiref/")),
    ("asyncio / uvloop", ("asyncio/", "uvloop")),
)


def _area(frames: Sequence[str]) -> str:
    """The innermost frame that belongs to a known area names the sample's area."""
    leaf = frames[-1]
    if any(n in leaf for n in AREAS[0][1]):
        return AREAS[0][0]
    for frame in reversed(frames):
        for area, needles in AREAS:
            if any(n in frame for n in needles):
                return area
    return "other"


# ---------------------------------------------------------------- Markdown


def publish(
    report: dict[str, Any],
    table: str,
    json_path: Path | None,
    write_docs: Callable[[], None] | None,
) -> None:
    """The end of a side script's run: its table printed, its report saved as JSON when asked,
    its docs section written unless `--no-docs` (None)."""
    print()
    print(table)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    if write_docs is not None:
        write_docs()


def replace_section(path: Path, heading: str, section: str) -> None:
    """Put `section` (starting with `heading`) in the markdown file at `path`, in place of the
    section under the same heading (up to the next `## `), or at the end."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(heading) + r".*?(?=\n## |\Z)", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def write_docs(path: Path, results: dict[str, Any], extras: Sequence[dict[str, Any]]) -> None:
    generated = render(results, extras)
    block = f"{START}\n{generated}\n{END}"
    if path.exists():
        text = path.read_text()
        if START in text and END in text:
            before, rest = text.split(START, 1)
            after = rest.split(END, 1)[1]
            path.write_text(before + block + after)
            return
        # Others' sections stay below the generated part.
        path.write_text(INTRO + block + "\n\n" + text.strip() + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(INTRO + block + "\n")


def render(results: dict[str, Any], extras: Sequence[dict[str, Any]]) -> str:
    out: list[str] = []
    m = results["machine"]
    settings = results["settings"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    others = "; ".join(f"{k}: {v}" for k, v in results.get("versions", {}).items()) or "—"
    out += [
        "## The run",
        "",
        f"- **Command:** `make bench` (`.venv/bin/python -m bench.run`), {results['date']}, "
        f"{results['seconds']:.0f} s in all.",
        f"- **Machine:** {m['cpus']} × {m['cpu_model']}, {m['memory_gb']} GB, Linux "
        f"{m['kernel']}, Python {m['python']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])} (the machine is shared: "
        "other test runs may have been running).",
        f"- **Versions:** {packages}. Other proxies: {others}.",
        f"- **Method:** {settings['rounds']} rounds; in each, every leg runs "
        f"{settings['duration_s']} s per concurrency, legs alternating (A B C A B C…); the "
        "tables show the median over rounds. Load generator: `bench/loadgen.py` (raw HTTP/1.1 "
        "over keep-alive connections, pre-built requests, uvloop); its own CPU is reported. "
        "CPU per call of the process under test is `utime + stime` from `/proc/<pid>/stat` "
        "over the measured window ÷ calls. Upstream: the mcp SDK's `MCPServer` "
        "(`tests/upstreams/faulty.py`, tool `echo`).",
        "",
        "## Targets",
        "",
        "| measure | target | measured | met |",
        "|---|---|---:|---|",
    ]
    for key, what, target, test in TARGETS:
        value = results.get(key)
        shown = fmt(value) if isinstance(value, int | float) else "–"
        met = "–"
        if test is not None and isinstance(value, int | float) and not math.isnan(value):
            met = "yes" if test(value) else "**no**"
        out.append(f"| {what} (`{key}`) | {target} | {shown} | {met} |")
    out += ["", "## Throughput and latency", ""]
    for kind in ("http-json", "http-sse", "stdio"):
        out += _throughput_table(results["throughput"], kind)
    out += _cpu_table(results["throughput"])
    out += _floor_table(results.get("floor_ratios") or {})
    out += _peer_table(results.get("real_peer_ratios") or {})
    out += _servers_table(results.get("asgi_server", {}))
    out += _memory_table(results.get("idle_sessions", []))
    out += _runtime_tables(results.get("runtime") or {})
    out += _balancing_table(results.get("balancing") or {})
    out += _profile_section(results.get("profile") or {}, results.get("profile_floor") or {})
    out += _extras_section(extras)
    if results.get("notes"):
        out += ["## Notes from the run", "", *(f"- {n}" for n in results["notes"]), ""]
    return "\n".join(out).rstrip() + "\n"


def _legs(table: Iterable[dict[str, Any]], kind: str) -> list[str]:
    order = ["direct", "fresh-sdk", "fresh-raw", "mcppool-rest", "mcppool-mcp"]
    legs = {r["leg"] for r in table if r["kind"] == kind}
    return [x for x in order if x in legs] + sorted(legs - set(order))


def _throughput_table(table: list[dict[str, Any]], kind: str) -> list[str]:
    rows = [r for r in table if r["kind"] == kind]
    if not rows:
        return []
    concurrencies = sorted({r["concurrency"] for r in rows})
    head = "| leg | " + " | ".join(f"c={c} calls/s | p50 ms | p99 ms" for c in concurrencies)
    lines = [
        f"### {KIND_NAMES[kind]}",
        "",
        head + " |",
        "|---|" + "---:|---:|---:|" * len(concurrencies),
    ]
    by = {(r["leg"], r["concurrency"]): r for r in rows}
    for leg in _legs(rows, kind):
        cells = []
        for c in concurrencies:
            r = by.get((leg, c))
            cells += (
                [fmt(r["calls_per_s"], 0), fmt(r["p50_ms"]), fmt(r["p99_ms"])] if r else ["–"] * 3
            )
        lines.append(f"| {LEG_NAMES.get(leg, leg)} | " + " | ".join(cells) + " |")
    errors = sum(r["errors"] for r in rows)
    lines += ["", f"Calls failed in these runs: {errors}.", ""]
    return lines


def _cpu_table(table: list[dict[str, Any]]) -> list[str]:
    lines = [
        "### CPU per call at concurrency 16",
        "",
        "ms of CPU per call: the process under test (gateway or proxy), the upstream server, and "
        "the load generator.",
        "",
        "| upstream | leg | process under test | upstream | load generator |",
        "|---|---|---:|---:|---:|",
    ]
    for kind in ("http-json", "http-sse", "stdio"):
        rows = {r["leg"]: r for r in table if r["kind"] == kind and r["concurrency"] == 16}
        for leg in _legs(rows.values(), kind):
            r = rows[leg]
            lines.append(
                f"| {kind} | {LEG_NAMES.get(leg, leg)} | "
                f"{fmt(r.get('subject_cpu_ms_per_call', math.nan), 3)} | "
                f"{fmt(r.get('upstream_cpu_ms_per_call', math.nan), 3)} | "
                f"{fmt(r['client_cpu_ms_per_call'], 3)} |"
            )
    return [*lines, ""]


def _floor_table(floors: dict[str, Any]) -> list[str]:
    if not floors:
        return []
    lines = [
        "### mcppool against the floor",
        "",
        "Per path (client / endpoint / upstream): CPU per call at c=16 of mcppool and of the "
        "floor (`bench/floor.py`: uvicorn + aiohttp + orjson, nothing else), and the p50 each "
        "adds at c=1 over calling the upstream directly (lean client only; the SDK client runs "
        "at c=16 only).",
        "",
        "| path | mcppool CPU ms | floor CPU ms | ratio "
        "| mcppool +p50 ms | floor +p50 ms | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for path, v in floors.items():
        lines.append(
            f"| {path} | {fmt(v['gateway_cpu_ms_per_call'], 3)} | "
            f"{fmt(v['floor_cpu_ms_per_call'], 3)} | {fmt(v['cpu_ratio'])} | "
            f"{fmt(v['gateway_added_p50_ms_c1'], 3)} | {fmt(v['floor_added_p50_ms_c1'], 3)} | "
            f"{fmt(v['added_p50_ratio'])} |"
        )
    return [*lines, ""]


def _peer_table(peers: dict[str, Any]) -> list[str]:
    if not peers:
        return []
    lines = [
        "### mcppool against the real peers",
        "",
        "Per path: the cheapest real third-party proxy on the same upstream and client (c=16), "
        "its CPU per call ÷ mcppool's; for stdio also with each side's stdio child counted.",
        "",
        "| path | best real peer | its CPU ms | mcppool CPU ms | ratio "
        "| with child: peer | ratio |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for path, v in peers.items():
        lines.append(
            f"| {path} | {v['best_peer']} | {fmt(v['best_peer_cpu_ms_per_call'], 3)} | "
            f"{fmt(v['gateway_cpu_ms_per_call'], 3)} | {fmt(v['ratio'])} | "
            f"{v.get('best_peer_with_child', '–')} | "
            f"{fmt(v.get('ratio_with_child', math.nan))} |"
        )
    return [*lines, ""]


def _servers_table(s: dict[str, Any]) -> list[str]:
    if not s:
        return []
    lines = [
        "## daphne vs uvicorn",
        "",
        "The same ASGI app (`mcppool.asgi:application`) and database, REST calls to the JSON "
        "upstream, alternating.",
        "",
        "| server | c=1 CPU ms/call | c=1 p99 ms | c=16 CPU ms/call | c=16 p99 ms | c=16 calls/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for server in ("uvicorn", "daphne"):
        lines.append(
            f"| {server} | {fmt(s.get(f'{server}_c1_cpu_ms_per_call', math.nan), 3)} | "
            f"{fmt(s.get(f'{server}_c1_p99_ms', math.nan))} | "
            f"{fmt(s.get(f'{server}_c16_cpu_ms_per_call', math.nan), 3)} | "
            f"{fmt(s.get(f'{server}_c16_p99_ms', math.nan))} | "
            f"{fmt(s.get(f'{server}_c16_calls_per_s', math.nan), 0)} |"
        )
    return [*lines, ""]


def _memory_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    steps = sorted(int(k[4:-3]) for k in rows[0] if re.fullmatch(r"rss_\d+_mb", k))
    lines = [
        "## Memory with idle sessions",
        "",
        "A fresh process each; handshake-era sessions opened at its MCP endpoint and left idle. "
        "RSS in MB (above the empty process in brackets).",
        "",
        "| process | empty | " + " | ".join(f"{s} sessions" for s in steps) + " | KB per session |",
        "|---|---:|" + "---:|" * len(steps) + "---:|",
    ]
    for r in rows:
        cells = [f"{fmt(r[f'rss_{s}_mb'], 1)} (+{fmt(r[f'above_empty_{s}_mb'], 1)})" for s in steps]
        lines.append(
            f"| {r['subject']} | {fmt(r['empty_mb'], 1)} | "
            + " | ".join(cells)
            + f" | {fmt(r['kb_per_session'], 1)} |"
        )
    return [*lines, ""]


def _runtime_tables(runtime: dict[str, Any]) -> list[str]:
    if not runtime:
        return []
    lines = [
        "## The runtime in-process (issue 3)",
        "",
        f"`{runtime.get('command', 'python -m bench.runtime_bench')}`: one process makes the "
        "calls, so its CPU per call is the client's; *runtime − direct* is the runtime's own "
        "share (balancer, borrow, stats, metrics).",
        "",
        "| upstream | leg | concurrency | calls/s | p50 ms | p99 ms | CPU ms/call |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runtime.get("summary", []):
        lines.append(
            f"| {r['transport']} | {r['leg']} | {r['concurrency']} | {fmt(r['calls_per_s'], 0)} | "
            f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['cpu_ms_per_call'], 3)} |"
        )
    share = runtime.get("runtime_cpu_share_ms", {})
    lines += [
        "",
        "Runtime's own CPU per call on top of the bare exchange (median over concurrencies): "
        + ", ".join(f"{k} {fmt(v, 3)} ms" for k, v in share.items())
        + " (targets: 0.15 ms HTTP, 0.1 ms stdio).",
        "",
        "| idle upstream sessions (HTTP) | era | Python heap MB | RSS growth MB | KB per session |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in runtime.get("idle_sessions", []):
        lines.append(
            f"| {r['sessions']} | {r['era']} | {fmt(r['heap_mb'])} | {fmt(r['rss_growth_mb'])} | "
            f"{fmt(r['kb_per_session'], 1)} |"
        )
    return [*lines, "", "Target: under 100 KB per idle session (HTTP).", ""]


def _balancing_table(balancing: dict[str, Any]) -> list[str]:
    if not balancing:
        return []
    p = balancing.get("params", {})
    lines = [
        "## Live balancing (issue 4)",
        "",
        f"`{balancing.get('command', 'python -m bench.live_balancing')}`: the real `Runtime` "
        f"against three processes of the test server ({p.get('healthy_delay_ms')} ms per call), "
        f"open-loop Poisson load at {p.get('rate')} calls/s, {p.get('duration')} s measured "
        f"after {p.get('warmup')} s of warm-up, {p.get('rounds')} rounds (medians). `slow`: one "
        f"replica {p.get('slow_factor')}× slower; `killed`: one replica SIGKILLed a third of the "
        "way in (failover = from the kill to the last call that failed or took over 3× the "
        "healthy p99).",
        "",
        "| scenario | strategy | calls | failed | p50 ms | p99 ms | p99 ÷ healthy | to slow/killed "
        "| retries (refused) | eject after s | failover s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in balancing.get("rows", []):
        lines.append(
            f"| {r['scenario']} | {r['strategy']} | {r['calls']} | {r['failed']} | "
            f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['p99_vs_healthy'])} | "
            f"{fmt(100 * r['slow_share'], 1) if r['slow_share'] is not None else '–'} % | "
            f"{r['retries']} ({r.get('retries_refused', 0)}) | "
            f"{fmt(r['time_to_eject_s'])} | {fmt(r['failover_s'])} |"
        )
    errors = sorted({e for r in balancing.get("rows", []) for e in r.get("errors", [])})
    if errors:
        lines += ["", "Errors the callers saw: " + "; ".join(f"`{e[:120]}`" for e in errors)]
    return [*lines, ""]


def _profile_section(profile: dict[str, Any], floor: dict[str, Any]) -> list[str]:
    if not profile.get("samples"):
        return []
    lines = [
        "## Profile of the gateway against the floor (REST, JSON upstream, c=16)",
        "",
        f"py-spy at 250 Hz on the uvicorn process: flamegraph `{profile['svg']}`, collapsed "
        f"stacks `{profile['collapsed']}` ({profile['samples']} samples); the floor's beside "
        f"it: `{floor.get('svg', '–')}` ({floor.get('samples', 0)} samples). A share times the "
        "CPU per call measured during the profile gives ms per call by area, so the two "
        "processes compare call for call.",
        "",
        *_area_table(profile, floor),
        "| mcppool function (self time) | share |",
        "|---|---:|",
        *(f"| `{f['function']}` | {100 * f['share']:.1f} % |" for f in profile["functions"]),
        "",
    ]
    return lines


def _area_table(profile: dict[str, Any], floor: dict[str, Any]) -> list[str]:
    # results.json stores a missing number as null: read it back as NaN.
    mine = profile.get("cpu_ms_per_call") or math.nan
    base = floor.get("cpu_ms_per_call") or math.nan
    theirs = {a["area"]: a["share"] for a in floor.get("areas", [])}
    areas = [a["area"] for a in profile["areas"]] + [a for a in theirs if a not in
             {x["area"] for x in profile["areas"]}]  # fmt: skip
    ours = {a["area"]: a["share"] for a in profile["areas"]}
    lines = [
        f"CPU per call while profiled: mcppool {fmt(mine, 3)} ms, floor {fmt(base, 3)} ms.",
        "",
        "| area (innermost known frame) | mcppool share | mcppool ms/call | floor ms/call |",
        "|---|---:|---:|---:|",
    ]
    for area in areas:
        lines.append(
            f"| {area} | {100 * ours.get(area, 0.0):.1f} % | "
            f"{fmt(ours.get(area, 0.0) * mine, 3)} | {fmt(theirs.get(area, 0.0) * base, 3)} |"
        )
    return [*lines, ""]


def _extras_section(extras: Sequence[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for e in extras:
        status = "" if e["exit"] == 0 else f" — **exit {e['exit']}**"
        took = f"Ran in {e['seconds']:.0f} s." if e.get("seconds") is not None else ""
        lines += [f"## `{e['command']}`{status}", "", took]
        if e["output"].strip():
            lines += ["", "```text", e["output"].strip()[-6000:], "```", ""]
        else:
            lines += ["It writes its own section of this page.", ""]
    return lines


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for key, _what, target, _test in TARGETS:
        value = results.get(key)
        shown = fmt(value) if isinstance(value, int | float) else "–"
        lines.append(f"{key:<36} {shown:>8}   target {target}")
    return lines


def main() -> int:
    """Re-render the generated part of docs/benchmarks.md from bench/results.json (no run)."""
    import json

    root = Path(__file__).resolve().parent.parent
    results = json.loads((root / "bench" / "results.json").read_text())
    write_docs(root / "docs" / "benchmarks.md", results, results.get("extras") or [])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
