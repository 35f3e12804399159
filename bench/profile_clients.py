"""Where the CPU per call goes under each client kind: mcppool and the floor, profiled alike.

    .venv/bin/python -m bench.profile_clients [--seconds 6] [--json PATH] [--no-docs]

`make bench` found mcppool's MCP endpoint spending more CPU per call under the mcp SDK's client
than under the lean load generator (0.86 against 0.55 ms in one run), and asked why. Here one
mcppool process (uvicorn, embedded default) and the floor (`bench/floor.py`, the same server and
upstream client, nothing else) forward `tools/call` to one faulty upstream answering
`application/json`, each driven at concurrency 16 by the lean client and by the SDK's `Client`
(one kept handshake-era session per worker), while py-spy samples the process at 250 Hz. For each
of the four: CPU per call (`/proc/<pid>/stat`), calls/s, and the CPU per call of each area of the
profile (share × CPU per call), so mcppool and the floor compare call for call under each client.
Writes a section of `docs/benchmarks.md` unless `--no-docs`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import gateway as gw
from bench import loadgen, report
from bench.report import publish, replace_section
from tests.upstreams import procs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Where the CPU goes under each client (`python -m bench.profile_clients`)"
CONCURRENCY = 16


def _profile(pid: int, target: loadgen.Target, seconds: float) -> dict[str, Any]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "profile.txt"
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
             "250", "--nonblocking", "--format", "raw", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.5)  # py-spy attaches
        result = loadgen.run_on_new_loop(
            loadgen.run(
                target, concurrency=CONCURRENCY, duration=seconds + 0.5, watch={"subject": pid}
            )
        )
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-300:]}")
        costs = report.top_costs(raw.read_text(), limit=8)
    cpu = result.cpu_ms_per_call["subject"]
    return {
        "cpu_ms_per_call": cpu,
        "calls_per_s": result.calls_per_s,
        "samples": costs["samples"],
        "areas": {a["area"]: a["share"] * cpu for a in costs["areas"]},
        "functions": costs["functions"],
    }


def measure(seconds: float) -> dict[str, Any]:
    upstream = procs.start_faulty_http(name="bench-http-json", json_response=True)
    floor = procs._start_http(
        "floor-http",
        lambda port: [
            sys.executable,
            "-m",
            "bench.floor",
            "--port",
            str(port),
            "--upstream",
            upstream.url,
        ],
    )
    server = {"name": "json-1", "transport": "streamable_http", "url": upstream.url}
    var_dir, token = gw.prepare([{"slug": "json", "name": "json", "servers": [server]}])
    mcppool = gw.start(var_dir, token, ready_path="/api/v1/pools/json/tools/echo/call")
    auth = (("Authorization", f"Bearer {token}"),)
    subjects = {
        "mcppool": (mcppool.pid, mcppool.mcp_url("json"), auth),
        "floor": (floor.pid, f"http://127.0.0.1:{floor.port}/mcp", ()),
    }
    runs: dict[str, Any] = {}
    try:
        for client in ("lean", "sdk"):
            for name, (pid, url, headers) in subjects.items():
                target: loadgen.Target = (
                    loadgen.McpTarget(url, headers=headers, name=name)
                    if client == "lean"
                    else loadgen.SdkTarget(url, headers=headers, name=name)
                )
                runs[f"{name}/{client}"] = _profile(pid, target, seconds)
    finally:
        mcppool.stop()
        floor.stop()
        upstream.stop()
    return {"seconds": seconds, "concurrency": CONCURRENCY, "runs": runs}


def table(result: dict[str, Any]) -> str:
    runs = result["runs"]
    names = list(runs)
    areas = sorted({a for run in runs.values() for a in run["areas"]},
                   key=lambda a: -max(r["areas"].get(a, 0.0) for r in runs.values()))  # fmt: skip
    lines = [
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        "| calls/s | " + " | ".join(f"{runs[n]['calls_per_s']:.0f}" for n in names) + " |",
        "| **CPU ms per call** | "
        + " | ".join(f"**{runs[n]['cpu_ms_per_call']:.3f}**" for n in names) + " |",
    ]  # fmt: skip
    for area in areas:
        cells = " | ".join(f"{runs[n]['areas'].get(area, 0.0):.3f}" for n in names)
        lines.append(f"| {area} | {cells} |")
    lines.append("| py-spy samples | " + " | ".join(str(runs[n]["samples"]) for n in names) + " |")
    return "\n".join(lines)


def _write_docs(result: dict[str, Any]) -> None:
    body = (
        f"{SECTION}\n\nOne run, {result['seconds']:g} s per profile, concurrency "
        f"{result['concurrency']}, JSON upstream, MCP endpoint (handshake-era session). Rows "
        "below the CPU per call split it by area of the py-spy profile (ms per call).\n\n"
        f"{table(result)}\n"
    )
    replace_section(DOCS, SECTION, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per profile")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)
    result = measure(args.seconds)
    publish(result, table(result), args.json, None if args.no_docs else lambda: _write_docs(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
