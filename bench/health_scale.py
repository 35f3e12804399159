"""Health checks at a thousand servers: do they keep up, what do they cost, what do they disturb?

    .venv/bin/python -m bench.health_scale [--servers 1000] [--pools 100] [--interval 5]
                                           [--measure 30] [--json PATH]

On the embedded default (SQLite, the SQLite broker), loopback only:

1. One process of cheap HTTP MCP stubs on `--servers` ports (handshake era: `initialize`, `ping`,
   `tools/list`): 80 % answer at once, 10 % answer each request after 0.5 s (slow, inside the
   2 s timeout), 10 % are dead (nothing listens: connection refused).
2. A gateway (uvicorn), a Celery worker (`--pool solo`: one process) and a separate beat, with the
   servers in `--pools` pools checked every `--interval` s, plus an unrelated pool of one real
   upstream (`tests/upstreams/faulty`).
3. Once every server has been judged (none `unknown`), `--measure` seconds of checks: how many
   servers were checked in each interval, the CPU per check of the worker and of beat (`/proc`),
   the database writes per check (INSERT/UPDATE/DELETE statements the worker sent, counted by a
   wrapper this module installs in the worker), the broker file's size.
4. Tool calls on the unrelated pool (REST, concurrency 4) before and during `mcppool apply` of a
   new weight for every one of the servers (a config reload of all of them): the p99 ratio.

Writes `health_scale_*` keys into `bench/results.json` (`--json` elsewhere) and prints a table;
`bench.run` folds it into `docs/benchmarks.md`. Bounded: a few minutes, every process stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from bench import gateway as gw
from bench import loadgen, procfs
from tests.upstreams import procs
from tests.upstreams.procs import ROOT, free_port

RESULTS = ROOT / "bench" / "results.json"
SLOW_SECONDS = 0.5
WARMUP_LIMIT = 150.0  # seconds for every server to be checked once
HANDSHAKE = "2025-11-25"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- the stubs (a child process)


async def _serve_stub(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slow: bool
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            message = json.loads(body) if body else {}
            if slow:
                await asyncio.sleep(SLOW_SECONDS)
            method = message.get("method") if isinstance(message, dict) else None
            if not isinstance(message, dict) or "id" not in message:
                writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                continue
            if method == "initialize":
                result: Any = {
                    "protocolVersion": HANDSHAKE,
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "stub", "version": "1"},
                }
            elif method == "tools/list":
                result = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
            elif method == "ping":
                result = {}
            else:
                result = None
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
            if result is None:
                reply["error"] = {"code": -32601, "message": f"method not found: {method}"}
            else:
                reply["result"] = result
            data = json.dumps(reply).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: s1\r\n"
                + f"content-length: {len(data)}\r\n\r\n".encode()
                + data
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _stubs_main(answering: list[int], slow: list[int]) -> None:
    servers = []
    for port, is_slow in [(p, False) for p in answering] + [(p, True) for p in slow]:

        async def handle(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, s: bool = is_slow
        ) -> None:
            await _serve_stub(r, w, s)

        servers.append(await asyncio.start_server(handle, "127.0.0.1", port, backlog=64))
    print("ready", flush=True)
    await asyncio.Event().wait()


# ---------------------------------------------------------------- the worker wrapper (a child)


def _worker_main(counter_path: str, celery_args: list[str]) -> None:
    """Celery's worker, counting the write statements it sends to the database."""
    import django

    django.setup()
    from django.db.backends.signals import connection_created

    writes: Counter[str] = Counter()

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            writes[" ".join(sql.split()[:3])] += len(params) if many and params else 1
        return execute(sql, params, many, context)

    def wrap(sender: Any, connection: Any, **_: Any) -> None:
        connection.execute_wrappers.append(count)

    connection_created.connect(wrap, weak=False)

    def dump() -> None:
        while True:
            Path(counter_path + ".tmp").write_text(json.dumps(writes))
            os.replace(counter_path + ".tmp", counter_path)  # never read half-written
            time.sleep(0.5)

    threading.Thread(target=dump, daemon=True).start()
    from mcppool.celery import app

    app.worker_main(["worker", *celery_args])


# ---------------------------------------------------------------- the run


class Run:
    def __init__(self, args: argparse.Namespace, var: Path) -> None:
        self.args = args
        self.var = var
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []

    def spawn(self, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        out = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.logs.append(out)
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
                process.wait(5)
        for out in self.logs:
            out.close()


def layout(args: argparse.Namespace) -> tuple[list[int], list[int], list[int]]:
    found: set[int] = set()
    while len(found) < args.servers:  # free_port() may hand out a port twice
        found.add(free_port())
    ports = sorted(found)
    dead_n = args.servers // 10
    slow_n = args.servers // 10
    return ports[dead_n + slow_n :], ports[dead_n : dead_n + slow_n], ports[:dead_n]


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def pools_config(
    args: argparse.Namespace, ports: list[int], unrelated_url: str, weight: int = 1
) -> list[dict[str, Any]]:
    per_pool = args.servers // args.pools
    pools: list[dict[str, Any]] = [
        {
            "slug": f"scale-{p:03d}",
            "name": f"scale-{p:03d}",
            "check_interval": float(args.interval),
            "check_timeout": 2.0,
            "sessions_per_server": 1,
            "servers": [
                {
                    "name": f"s{i:02d}",
                    "transport": "streamable_http",
                    "era": "handshake",
                    "url": f"http://127.0.0.1:{port}/mcp",
                    "weight": weight,
                }
                for i, port in enumerate(ports[p * per_pool : (p + 1) * per_pool])
            ],
        }
        for p in range(args.pools)
    ]
    pools.append(
        {
            "slug": "unrelated",
            "name": "unrelated",
            "servers": [{"name": "u1", "transport": "streamable_http", "url": unrelated_url}],
        }
    )
    return pools


def db_rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return list(conn.execute(sql, params).fetchall())


def checked_servers(db: Path) -> int:
    return int(db_rows(db, "SELECT COUNT(DISTINCT server_id) FROM monitoring_healthcheck")[0][0])


def unknown_servers(db: Path) -> int:
    return int(db_rows(db, "SELECT COUNT(*) FROM servers_server WHERE health = 'unknown'")[0][0])


def coverage(db: Path, start: float, end: float, interval: float, servers: int) -> float:
    """The share of servers checked within every interval of [start, end).

    A check is stamped when its round's results are written, which is up to the check timeout
    (2 s) and the start jitter (a tenth of the interval) after the round began; so a server counts
    as checked within each interval when no gap between its checks (nor from `start` to the first
    or from the last to `end`) is longer than the interval plus that slack. Rounds every interval,
    none missed, give 1.0; one round missed fails every server in it.
    """
    slack = interval * 0.1 + 2.0
    rows = db_rows(
        db,
        "SELECT server_id, (julianday(at) - 2440587.5) * 86400.0 FROM monitoring_healthcheck "
        "WHERE at >= datetime(?, 'unixepoch') AND at < datetime(?, 'unixepoch') ORDER BY 2",
        (start, end),
    )
    times: dict[int, list[float]] = {}
    for server_id, at in rows:
        times.setdefault(int(server_id), []).append(float(at))
    good = 0
    for stamps in times.values():
        edges = [start, *stamps, end]
        if max(b - a for a, b in itertools.pairwise(edges)) <= interval + slack:
            good += 1
    return good / servers


def checks_between(db: Path, start: float, end: float) -> int:
    return int(
        db_rows(
            db,
            "SELECT COUNT(*) FROM monitoring_healthcheck "
            "WHERE at >= datetime(?, 'unixepoch') AND at < datetime(?, 'unixepoch')",
            (start, end),
        )[0][0]
    )


def written(counter: Path) -> Counter[str]:
    """Write statements the worker sent so far, by kind (`_worker_main` keeps the file)."""
    return Counter(json.loads(counter.read_text())) if counter.exists() else Counter()


def cpu(pid: int) -> float:
    return procfs.cpu_seconds(pid) + sum(procfs.cpu_seconds(c) for c in procfs.children(pid))


async def p99_during(target: loadgen.Target, seconds: float) -> tuple[float, float]:
    result = await loadgen.run(target, concurrency=4, duration=seconds, warmup_calls=2)
    data = result.as_dict()
    return float(data["p99_ms"]), float(data["calls_per_s"])


def apply_weights(env: dict[str, str], path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "manage.py", "mcppool", "apply", str(path)],
        cwd=ROOT, env=env, capture_output=True, timeout=600,
    )  # fmt: skip


@contextlib.contextmanager
def running(args: argparse.Namespace) -> Iterator[Run]:
    with tempfile.TemporaryDirectory(prefix="mcppool-health-scale-") as tmp:
        run = Run(args, Path(tmp))
        try:
            yield run
        finally:
            run.stop()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    answering, slow, dead = layout(args)
    all_ports = [*dead, *slow, *answering]
    unrelated = procs.start_faulty_http(name="unrelated", json_response=True)
    try:
        with running(args) as run:
            return _measure(args, run, answering, slow, all_ports, unrelated.url)
    finally:
        unrelated.stop()


def _measure(
    args: argparse.Namespace,
    run: Run,
    answering: list[int],
    slow: list[int],
    all_ports: list[int],
    unrelated_url: str,
) -> dict[str, Any]:
    env = {**gw.environment(run.var), "PYTHONPATH": str(ROOT)}
    stubs = run.spawn(
        [sys.executable, "-c", "import sys, asyncio, json; from bench.health_scale import "
         f"_stubs_main; asyncio.run(_stubs_main({answering!r}, {slow!r}))"],
        env,
    )  # fmt: skip
    log(f"{len(all_ports)} stub servers starting (pid {stubs.pid})")
    deadline = time.monotonic() + 60
    while not _listening(answering[-1]) and time.monotonic() < deadline:
        if stubs.poll() is not None:
            run.logs[0].seek(0)
            raise RuntimeError(f"the stub servers did not start: {run.logs[0].read()[-2000:]!r}")
        time.sleep(0.2)
    var_dir, token = gw.prepare(pools_config(args, all_ports, unrelated_url), run.var)
    db = var_dir / "mcppool.sqlite3"
    gateway = gw.start(var_dir, token)
    run.processes.append(gateway.process.process)
    env = {**gateway.env, "PYTHONPATH": str(ROOT)}
    counter = run.var / "writes"
    worker = run.spawn(
        [sys.executable, "-c", "import sys; from bench.health_scale import _worker_main; "
         f"_worker_main({str(counter)!r}, ['--pool', 'solo', '--loglevel', 'WARNING', "
         "'--without-gossip', '--without-mingle', '--without-heartbeat'])"],
        env,
    )  # fmt: skip
    beat = run.spawn(
        [sys.executable, "-m", "celery", "-A", "mcppool", "beat", "--loglevel", "WARNING",
         "--schedule", str(run.var / "beat-schedule")],
        env,
    )  # fmt: skip
    log(f"gateway {gateway.pid}, worker {worker.pid}, beat {beat.pid}; waiting for every check")
    started = time.monotonic()
    everyone = args.servers + 1  # the unrelated pool's server is checked too
    while time.monotonic() - started < WARMUP_LIMIT and (
        checked_servers(db) < everyone or unknown_servers(db)
    ):
        time.sleep(1.0)  # until every server has been judged (up or down): the steady state
    warmup = time.monotonic() - started
    log(f"{checked_servers(db)} servers judged after {warmup:.0f} s; measuring {args.measure} s")

    cpu0 = {"worker": cpu(worker.pid), "beat": cpu(beat.pid)}
    writes0 = written(counter)
    t0 = time.time()
    target = loadgen.RestTarget(gateway.rest_url("unrelated"), gateway.token, name="unrelated")
    p99_before, rate_before = asyncio.run(p99_during(target, args.measure))
    t1 = time.time()
    cpu1 = {"worker": cpu(worker.pid), "beat": cpu(beat.pid)}
    writes1 = written(counter)
    log(f"writes by statement over the window: {dict(writes1 - writes0)}")
    flips = db_rows(
        db,
        "SELECT old, new, source, COUNT(*) FROM servers_flip WHERE at >= datetime(?, 'unixepoch') "
        "GROUP BY old, new, source",
        (t0,),
    )
    log(f"flips over the window: {flips}")
    errors = db_rows(
        db,
        "SELECT substr(last_error, 1, 120), COUNT(*) FROM servers_server WHERE health = 'down' "
        "GROUP BY 1 ORDER BY 2 DESC LIMIT 3",
    )
    log(f"why servers are down: {errors}")
    done = checks_between(db, t0, t1)
    share = coverage(db, t0, t1, args.interval, everyone)
    rounds = max((t1 - t0) / args.interval, 1.0)

    log("reloading every server (mcppool apply of a new weight for all) under calls")
    reweighted = run.var / "reweighted.yaml"
    reweighted.write_text(
        yaml.safe_dump({"pools": pools_config(args, all_ports, unrelated_url, weight=2)})
    )
    applying = threading.Thread(target=apply_weights, args=(env, reweighted))
    applying.start()
    p99_reload, rate_reload = asyncio.run(p99_during(target, max(10.0, args.measure / 2)))
    applying.join(600)
    broker = var_dir / "celery-broker.sqlite3"
    return {
        "health_scale_servers": args.servers,
        "health_scale_pools": args.pools,
        "health_scale_interval_s": args.interval,
        "health_scale_warmup_s": round(warmup, 1),
        "health_scale_checks_per_interval": round(done / rounds, 1),
        "health_scale_checked_within_interval_fraction": round(share, 3),
        "health_scale_worker_cpu_ms_per_check": round(
            1000 * (cpu1["worker"] - cpu0["worker"]) / max(done, 1), 3
        ),
        "health_scale_beat_cpu_ms_per_check": round(
            1000 * (cpu1["beat"] - cpu0["beat"]) / max(done, 1), 4
        ),
        "health_scale_db_writes_per_check": round(
            sum((writes1 - writes0).values()) / max(done, 1), 3
        ),
        "health_scale_broker_file_mb": round(broker.stat().st_size / 1e6, 2)
        if broker.exists()
        else 0.0,
        "health_scale_unrelated_p99_ms_before": p99_before,
        "health_scale_unrelated_p99_ms_reload": p99_reload,
        "health_scale_reload_p99_ratio": round(p99_reload / p99_before, 2) if p99_before else None,
        "health_scale_unrelated_calls_per_s_before": rate_before,
        "health_scale_unrelated_calls_per_s_reload": rate_reload,
    }


def print_table(result: dict[str, Any]) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--measure", type=float, default=30.0)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(args)
    print_table(result)
    text = args.json.read_text() if args.json.exists() else ""
    data = json.loads(text) if text.strip() else {}
    data.update(result)
    args.json.write_text(json.dumps(data, indent=1) + "\n")  # as bench.run writes it
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
