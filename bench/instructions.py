"""Instructions per call, counted by valgrind: what a change costs, whatever the machine is doing.

    .venv/bin/python -m bench.instructions [--ref COMMIT ...] [--calls 1000] [--json PATH]
                                           [--no-docs] [--note TEXT]
    .venv/bin/python -m bench.instructions --render PATH [--note TEXT]   (docs from a --json)

CPU time per call moves ±20 % between two processes of the same code on a shared 2-core machine
(`bench.versus` with `--ref HEAD` shows it), too much to check a 2 % or 5 % budget. Instructions
do not: valgrind's callgrind counts every instruction the gateway process executes, the same
count for the same work whatever else the machine does (runs of one tree agreed within 3 %: how
many events one turn of the event loop handles still depends on timing).

Each tree (this one, and each `--ref`, default `bench.versus.BASELINE`, unpacked by `git archive`)
serves one JSON upstream under uvicorn inside `valgrind --tool=callgrind`. After a warm-up (200
calls), the counters are zeroed, `--calls` REST calls run at concurrency 16 and the counters are
dumped; then the same for MCP calls on kept handshake-era sessions. Last, an idle window (no calls)
counts what the process does by itself each second (upkeep, reports, config polls): under valgrind
a window of calls lasts long, and without this a tree with more background work (or a slower
window) would count it as per-call cost. Reported: instructions per call (the window's total, less
the idle rate times its duration, over its calls; the load generator's per-worker warm-up calls
included alike for every tree) and the ratio of this tree to each earlier one. A commit whose
migrations had two leaves (an integration branch before its merge migration) gets them merged in
its temporary copy. Writes a section of `docs/benchmarks.md` unless `--no-docs`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench import gateway as gw
from bench import procfs
from bench.loadgen import McpTarget, RestTarget, Target, run, run_on_new_loop
from bench.report import publish, replace_section
from bench.versus import BASELINE, checkouts
from tests.upstreams import procs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Instructions per call (`python -m bench.instructions`)"
CONCURRENCY = 16
WARMUP_CALLS = 200
IDLE_WINDOW = 15.0  # seconds of no calls, to count the process's own background work
IDLE = "idle, per second"
START_TIMEOUT = 600.0  # Django and the runtime start ~50× slower under valgrind


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"bench.instructions needs {name} (Debian's valgrind)")
    return path


def merge_migrations(root: Path, env: dict[str, str]) -> None:
    """Give a tree whose migration graph has two leaves its merge migration (in its copy)."""
    subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--merge", "--noinput"],
        cwd=root, env=env, capture_output=True, check=False,
    )  # fmt: skip


def _wait_ready(process: subprocess.Popen[bytes], url: str, token: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    request = urllib.request.Request(
        url,
        data=b'{"arguments": {"text": "ready"}}',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the gateway under valgrind exited before it answered")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the gateway under valgrind did not answer within {START_TIMEOUT:g} s")


def _dump_total(control: str, pid: int, out_dir: Path) -> int:
    """Dump the counters now; the instructions counted since they were last zeroed."""
    before = set(out_dir.iterdir())
    subprocess.run([control, "--dump", str(pid)], capture_output=True, check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in set(out_dir.iterdir()) - before:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def measure_tree(root: Path, upstream_url: str, calls: int) -> dict[str, float]:
    """Instructions per call of one tree, REST and MCP."""
    valgrind, control = _tool("valgrind"), _tool("callgrind_control")
    var_dir = Path(tempfile.mkdtemp(prefix="mcppool-instructions-"))
    merge_migrations(root, gw.environment(var_dir, root))
    pools = [{"slug": "bench", "name": "Bench", "servers": [
        {"name": "up", "transport": "streamable_http", "url": upstream_url}]}]  # fmt: skip
    var_dir, token = gw.prepare(pools, var_dir, root=root)
    out_dir = var_dir / "callgrind"
    out_dir.mkdir()
    port = procs.free_port()
    process = subprocess.Popen(
        [valgrind, "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p",
         *gw.command("uvicorn", port)],
        cwd=root, env=gw.environment(var_dir, root),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    auth = (("Authorization", f"Bearer {token}"),)
    rest_url = f"{base}/api/v1/pools/bench/tools/echo/call"
    targets: dict[str, Target] = {
        "REST": RestTarget(rest_url, token),
        "MCP": McpTarget(f"{base}/mcp/bench/", headers=auth),
    }
    try:
        _wait_ready(process, rest_url, token)
        windows: dict[str, tuple[int, float, int]] = {}  # instructions, seconds, calls
        for path, target in targets.items():
            run_on_new_loop(run(target, concurrency=4, duration=600, max_calls=WARMUP_CALLS))
            subprocess.run([control, "--zero", str(process.pid)], capture_output=True, check=True)
            started = time.monotonic()
            result = run_on_new_loop(
                run(target, concurrency=CONCURRENCY, duration=600, max_calls=calls)
            )
            total = _dump_total(control, process.pid, out_dir)
            windows[path] = (total, time.monotonic() - started, result.calls)
        # What the process does with no call at all (upkeep, reports, config polls), per second:
        # taken out of each window, so a slower window does not count more of it per call.
        subprocess.run([control, "--zero", str(process.pid)], capture_output=True, check=True)
        started = time.monotonic()
        time.sleep(IDLE_WINDOW)
        idle = _dump_total(control, process.pid, out_dir) / (time.monotonic() - started)
        per_call: dict[str, float] = {IDLE: idle}
        for path, (total, seconds, n) in windows.items():
            per_call[path] = (total - idle * seconds) / n
            print(f"{root.name:28} {path:5} {per_call[path]:>10,.0f} instructions per call "
                  f"({n} calls in {seconds:.0f} s; {total / n:,.0f} before taking out "
                  f"{idle:,.0f} a second of idle work)", flush=True)  # fmt: skip
        return per_call
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(var_dir, ignore_errors=True)


def measure(refs: list[str], calls: int) -> dict[str, Any]:
    upstream = procs.start_faulty_http(name="bench-upstream", json_response=True)
    try:
        with checkouts(refs) as trees:
            sides = [("this tree", ROOT)] + [(commit[:7], root) for root, commit in trees]
            counted = {side: measure_tree(root, upstream.url, calls) for side, root in sides}
            commits = [commit for _, commit in trees]
    finally:
        upstream.stop()
    mine = counted["this tree"]
    return {
        "machine": procfs.machine_brief(),
        "calls": calls,
        "concurrency": CONCURRENCY,
        "refs": commits,
        "instructions_per_call": counted,
        "ratio": {
            side: {path: mine[path] / n for path, n in per_path.items()}
            for side, per_path in counted.items()
            if side != "this tree"
        },
    }


def table(report: dict[str, Any]) -> str:
    counted = report["instructions_per_call"]
    paths = list(counted["this tree"])
    lines = [
        "| tree | " + " | ".join(p if p == IDLE else f"{p}, per call" for p in paths) + " |",
        "|---|" + "---|" * len(paths),
    ]
    for side, per_path in counted.items():
        cells = []
        for path in paths:
            cell = f"{per_path[path]:,.0f}"
            if side != "this tree":
                ratio = report["ratio"][side][path]
                cell += f" (this tree {(ratio - 1) * 100:+.1f} %)"
            cells.append(cell)
        lines.append(f"| {side} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_docs(report: dict[str, Any], text: str) -> None:
    machine = report["machine"]
    intro = (
        f"Instructions the gateway process executed per call under callgrind, {report['calls']} "
        f"calls per path at concurrency {report['concurrency']} after a warm-up, one JSON "
        f"upstream; this tree (tracing and audit off) against earlier commits, on "
        f"{machine['cpu']}. The count moves far less with the machine's load than CPU time does "
        "(runs of one tree agreed within 3 %, where CPU time moved ±20 %)."
    )
    parts = [SECTION, "", textwrap.fill(intro, 100), "", table(report), ""]
    if text:
        parts += [textwrap.fill(text, 100, break_on_hyphens=False), ""]
    replace_section(DOCS, SECTION, "\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--ref", action="append", help=f"an earlier commit (default {BASELINE}; none: no other)"
    )
    parser.add_argument("--calls", type=int, default=1000, help="calls per path and tree")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--note", default="", help="a sentence under the table in the docs")
    parser.add_argument("--render", type=Path, help="write the docs from this --json, no run")
    args = parser.parse_args()
    if args.render:
        write_docs(json.loads(args.render.read_text()), args.note)
        return
    refs = [] if args.ref == ["none"] else args.ref or [BASELINE]  # none: this tree alone
    report = measure(refs, args.calls)
    docs = None if args.no_docs else lambda: write_docs(report, args.note)
    publish(report, table(report), args.json, docs)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
