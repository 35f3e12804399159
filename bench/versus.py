"""This tree's gateway against an earlier commit's, side by side: what a change cost per call.

    .venv/bin/python -m bench.versus [--ref COMMIT] [--duration 2] [--rounds 5] [--json PATH]
                                     [--no-docs]

The earlier commit (default: `BASELINE`, main before the 2026-wire and tracing work of issues 12
and 20) is unpacked with `git archive` into a temporary directory and served from there by the
same Python and virtualenv, so the two differ only in mcppool's own code. Both gateways run under
uvicorn on their own prepared SQLite database, in front of one JSON upstream, driven by the same
load generator at concurrency 16: REST calls and MCP calls on a kept handshake-era session (the
paths both commits serve). This tree runs with tracing and the audit log off, as by default.

Rounds interleave the two, so a burst of other work lands on both alike; each row is the median
round by gateway CPU per call (`/proc/<pid>/stat`). The figure that matters is the ratio, new
over old, of gateway CPU per call; the issue-12 budget is +5 %, the issue-20 budget for tracing
off is +2 %. Writes a section of `docs/benchmarks.md` unless `--no-docs`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import tarfile
import tempfile
import textwrap
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
SECTION = "## This tree against an earlier commit (`python -m bench.versus`)"
BASELINE = "40d304f"  # main before issues 12 (2026 wire rules) and 20 (traces, audit)
CONCURRENCY = 16
READY = "/api/v1/pools/bench/tools/echo/call"


@contextmanager
def checkouts(refs: list[str]) -> Iterator[list[tuple[Path, str]]]:
    """Each of `refs`' files in a temporary directory, with its full commit id."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(checkout(ref)) for ref in refs]


@contextmanager
def checkout(ref: str) -> Iterator[tuple[Path, str]]:
    """`ref`'s files in a temporary directory, and its full commit id."""
    git = shutil.which("git") or "git"
    commit = subprocess.run(
        [git, "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mcppool-versus-") as directory:
        archive = subprocess.run(
            [git, "archive", "--format=tar", commit], cwd=ROOT, capture_output=True, check=True
        ).stdout
        with tempfile.TemporaryFile() as tar_file:
            tar_file.write(archive)
            tar_file.seek(0)
            with tarfile.open(fileobj=tar_file) as tar:
                tar.extractall(directory, filter="data")
        yield Path(directory), commit


def targets(gateway: gw.Gateway, side: str) -> list[Target]:
    auth = (("Authorization", f"Bearer {gateway.token}"),)
    return [
        RestTarget(gateway.rest_url("bench"), gateway.token, name=f"REST · {side}"),
        McpTarget(gateway.mcp_url("bench"), headers=auth, name=f"MCP · {side}"),
    ]


async def measure(refs: list[str], duration: float, rounds: int) -> dict[str, Any]:
    upstream = procs.start_faulty_http(name="bench-upstream", json_response=True)
    pools = [{"slug": "bench", "name": "Bench", "servers": [
        {"name": "up", "transport": "streamable_http", "url": upstream.url}]}]  # fmt: skip
    gateways: dict[str, gw.Gateway] = {}
    try:
        with checkouts(refs) as trees:
            sides = [("this tree", ROOT)] + [(f"at {commit[:7]}", root) for root, commit in trees]
            for side, root in sides:
                var_dir, token = gw.prepare(pools, root=root)
                gateways[side] = gw.start(var_dir, token, ready_path=READY, root=root)
            runs: dict[str, list[RunResult]] = {}
            for _ in range(rounds):
                for side, gateway in gateways.items():
                    for target in targets(gateway, side):
                        result = await run(
                            target,
                            concurrency=CONCURRENCY,
                            duration=duration,
                            watch={"gateway": gateway.pid},
                        )
                        runs.setdefault(target.name, []).append(result)
            for gateway in gateways.values():
                gateway.stop()
    finally:
        for gateway in gateways.values():
            gateway.stop()
        upstream.stop()
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
        "refs": [commit for _, commit in trees],
        "duration_s": duration,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "rows": rows,
        "cpu_ratio": ratios(rows),
    }


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Gateway CPU per call, this tree over each earlier commit, per path ("REST · at abc1234")."""
    cpu = {row["target"]: row["cpu_ms_per_call"]["gateway"] for row in rows}
    return {
        target: cpu[target.split(" · ")[0] + " · this tree"] / value
        for target, value in cpu.items()
        if not target.endswith("· this tree")
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        "| path · code | calls/s | p50 ms | p99 ms | gateway CPU ms/call |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['target']} | {r['calls_per_s']:.0f} | {r['p50_ms']:.3f} | "
                     f"{r['p99_ms']:.3f} | {r['cpu_ms_per_call']['gateway']:.3f} |")  # fmt: skip
    lines.append("")
    lines.append("| path · earlier commit | gateway CPU per call, this tree / earlier |")
    lines.append("|---|---|")
    for path, ratio in report["cpu_ratio"].items():
        lines.append(f"| {path} | {ratio:.3f} ({(ratio - 1) * 100:+.1f} %) |")
    return "\n".join(lines)


def write_docs(report: dict[str, Any], text: str) -> None:
    machine = report["machine"]
    intro = " ".join([
        "This tree (tracing and audit off) against commit"
        f" {', '.join(ref[:7] for ref in report['refs'])}, each under uvicorn "
        f"on its own SQLite database, one JSON upstream, concurrency {report['concurrency']}, "
        f"the median of {report['rounds']} interleaved rounds of {report['duration_s']:g} s per "
        f"row, on {machine['cpu']} ({machine['cores']} cores, load average "
        f"{machine['load_average_1m']} at the end).",
    ])  # fmt: skip
    parts = [SECTION, "", textwrap.fill(intro, 100), "", table(report), ""]
    if text:
        parts += [textwrap.fill(text, 100, break_on_hyphens=False), ""]
    replace_section(DOCS, SECTION, "\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ref", action="append", help=f"an earlier commit (default {BASELINE})")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--note", default="", help="a sentence under the table in the docs")
    args = parser.parse_args()
    report = run_on_new_loop(measure(args.ref or [BASELINE], args.duration, args.rounds))
    docs = None if args.no_docs else lambda: write_docs(report, args.note)
    publish(report, table(report), args.json, docs)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
