"""Failure detection: how fast a killed server stops getting calls, and is marked down.

    .venv/bin/python -m bench.failure_detection [--json bench/failure_detection.json] [--quick]

Each trial starts three replicas of the faulty test server (Streamable HTTP, JSON answers) in one
pool, serves 8 concurrent clients through an in-process runtime (the web process's `RuntimeHost`,
reading its config from the database), runs the active checks on a beat-like schedule in a thread
(`checks.run_pool_checks` every `check_interval` seconds, as Celery beat would send them), then
SIGKILLs one replica at a random moment of the check interval and measures:

* **last routed call**: time from the kill to the last call the runtime sent to the dead replica
  (passive detection: the outlier detector ejects it after 5 failures in a row);
* **down in DB**: time from the kill to its `up → down` flip (active checks: `fall` failed checks),
  next to the bound `fall × interval + timeout`;
* **runtime applied**: time from the kill until the runtime treats it as down (config poll, 1 s);
* **failed calls**, split: calls that never reached a server (target 0: they are retried on
  another replica) and calls in flight on the replica when it died (they may have run, and the
  tool called, `slow`, is not annotated idempotent, so they are not retried).

Runs on the embedded default (SQLite in a temporary directory; DATABASE_URL and REDIS_URL are
ignored), so it never touches a real database. Evidence, not a test: numbers move with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "failure_detection.json"
CLIENTS = 8
THINK = 0.005  # seconds between one client's calls: ~1000 calls/s in all
WARMUP = 2.0
SETTLE = 1.5  # keep measuring this long after the runtime applied "down"
VICTIM = "r1"


@dataclass(frozen=True)
class Setting:
    name: str
    check_interval: float
    check_timeout: float
    fall: int

    @property
    def bound(self) -> float:
        return self.fall * self.check_interval + self.check_timeout


SETTINGS = (Setting("defaults", 5.0, 2.0, 3), Setting("fast checks", 1.0, 0.5, 3))


@dataclass
class Trial:
    setting: str
    bound_s: float
    kill_phase: float  # where in the check interval the kill landed (0..1)
    last_routed_s: float | None = None
    ejected_s: float | None = None
    down_in_db_s: float | None = None
    runtime_down_s: float | None = None
    calls: int = 0
    failed_undelivered: int = 0
    failed_in_flight: int = 0
    no_server: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def setup_django() -> Path:
    # A private embedded database: the benchmark must never write to a configured one.
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    var = Path(tempfile.mkdtemp(prefix="mcppool-failure-bench-"))
    os.environ["MCPPOOL_VAR_DIR"] = str(var)
    os.environ["DJANGO_SETTINGS_MODULE"] = "mcppool.settings"
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return var


class Checker(threading.Thread):
    """Beat and worker in one: a round of checks every interval, on a fixed schedule."""

    def __init__(self, pool_id: int, interval: float) -> None:
        super().__init__(name="bench-checker", daemon=True)
        self.pool_id = pool_id
        self.interval = interval
        self.started_at = time.monotonic()
        self.stopping = threading.Event()

    def run(self) -> None:
        from django.db import connection

        from monitoring import checks

        next_round = self.started_at
        try:
            while not self.stopping.is_set():
                checks.run_pool_checks(self.pool_id)
                next_round += self.interval
                self.stopping.wait(max(0.0, next_round - time.monotonic()))
        finally:
            connection.close()


async def run_trial(setting: Setting, rng: random.Random) -> Trial:  # noqa: C901  # one scripted trial, read top to bottom
    from asgiref.sync import sync_to_async

    from balancing.engine.config import Health
    from balancing.engine.errors import UpstreamError
    from balancing.engine.runtime import NoHealthyServer
    from balancing.host import RuntimeHost
    from monitoring import checks
    from servers import services
    from servers.models import Flip, Pool, Server
    from tests.upstreams import procs

    replicas = [procs.start_faulty_http(name=f"r{i}", json_response=True) for i in range(3)]
    host = RuntimeHost()
    checker: Checker | None = None
    trial = Trial(setting.name, setting.bound, kill_phase=0.0)
    try:

        @sync_to_async
        def make_pool() -> tuple[int, int]:
            Pool.objects.all().delete()
            pool = services.save(
                Pool(
                    name="Bench",
                    slug="bench",
                    check_interval=setting.check_interval,
                    check_timeout=setting.check_timeout,
                    fall=setting.fall,
                )
            )
            victim = 0
            for r in replicas:
                server = services.save(
                    Server(pool=pool, name=r.name, transport="streamable_http", url=r.url)
                )
                victim = server.pk if r.name == VICTIM else victim
            checks.run_pool_checks(pool.pk)  # every replica up before traffic starts
            return pool.pk, victim

        pool_id, victim_id = await make_pool()
        await host.start()
        runtime = host.runtime
        checker = Checker(pool_id, setting.check_interval)
        checker.start()

        stop = asyncio.Event()
        runtime_down = asyncio.Event()
        killed_at: float | None = None
        victim_calls = 0
        victim_endpoint = next(
            e for e in runtime.pool("bench").endpoints.values() if e.config.name == VICTIM
        )

        async def client() -> None:
            while not stop.is_set():
                try:
                    await runtime.call_tool("bench", "slow", {"seconds": 0})
                    trial.calls += 1
                except NoHealthyServer:
                    trial.no_server += 1
                except UpstreamError as exc:
                    trial.calls += 1
                    if exc.delivered:
                        trial.failed_in_flight += 1
                    else:
                        trial.failed_undelivered += 1
                    kind = type(exc).__name__
                    trial.failure_kinds[kind] = trial.failure_kinds.get(kind, 0) + 1
                await asyncio.sleep(THINK)

        def routed_to_victim() -> int:
            return sum(v for (_, s, _), v in runtime.metrics.calls.items() if s == VICTIM)

        async def watch() -> None:
            nonlocal victim_calls
            while not stop.is_set():
                now = time.monotonic()
                count = routed_to_victim()
                if killed_at is not None:
                    if count != victim_calls:
                        trial.last_routed_s = now - killed_at
                    if trial.ejected_s is None and victim_endpoint.outlier.in_cycle:
                        trial.ejected_s = now - killed_at
                    if (
                        trial.runtime_down_s is None
                        and victim_endpoint.config.health is Health.DOWN
                    ):
                        trial.runtime_down_s = now - killed_at
                        runtime_down.set()
                victim_calls = count
                await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        tasks.append(asyncio.create_task(watch()))
        await asyncio.sleep(WARMUP + rng.uniform(0, setting.check_interval))
        victim = replicas[1]
        trial.kill_phase = ((time.monotonic() - checker.started_at) / setting.check_interval) % 1
        killed_wall = time.time()
        killed_at = time.monotonic()
        os.killpg(victim.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime_down.wait(), setting.bound + 10.0)
        await asyncio.sleep(SETTLE)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

        @sync_to_async
        def flipped_down() -> float | None:
            flip = Flip.objects.filter(server_id=victim_id, new="down").order_by("at").first()
            return flip.at.timestamp() - killed_wall if flip else None

        trial.down_in_db_s = await flipped_down()
    except Exception as exc:  # a broken trial is reported, the others still run
        trial.errors.append(repr(exc))
    finally:
        if checker is not None:
            checker.stopping.set()
            checker.join(30)
        await host.stop()
        for r in replicas:
            r.stop()
    return trial


def summarize(trials: list[Trial]) -> list[dict[str, Any]]:
    rows = []
    for setting in SETTINGS:
        mine = [t for t in trials if t.setting == setting.name and not t.errors]
        if not mine:
            continue

        def worst(attr: str, of: list[Trial] = mine) -> float | None:
            values = [getattr(t, attr) for t in of if getattr(t, attr) is not None]
            return max(values) if values else None

        def median(attr: str, of: list[Trial] = mine) -> float | None:
            values = [getattr(t, attr) for t in of if getattr(t, attr) is not None]
            return statistics.median(values) if values else None

        rows.append(
            {
                "setting": setting.name,
                "interval_s": setting.check_interval,
                "timeout_s": setting.check_timeout,
                "fall": setting.fall,
                "bound_s": setting.bound,
                "trials": len(mine),
                "last_routed_median_s": median("last_routed_s"),
                "last_routed_worst_s": worst("last_routed_s"),
                "down_in_db_median_s": median("down_in_db_s"),
                "down_in_db_worst_s": worst("down_in_db_s"),
                "runtime_down_worst_s": worst("runtime_down_s"),
                "calls": sum(t.calls for t in mine),
                "failed_undelivered": sum(t.failed_undelivered for t in mine),
                "failed_in_flight": sum(t.failed_in_flight for t in mine),
                "no_server": sum(t.no_server for t in mine),
            }
        )
    return rows


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| checks | trials | last routed call (median / worst) | down in DB (median / worst) "
        "| bound fall×interval+timeout | runtime applied (worst) | calls | failed: never "
        "delivered | failed: in flight |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} ({r['interval_s']:g} s / {r['timeout_s']:g} s / fall "
            f"{r['fall']}) | {r['trials']} | {_s(r['last_routed_median_s'])} / "
            f"{_s(r['last_routed_worst_s'])} | {_s(r['down_in_db_median_s'])} / "
            f"{_s(r['down_in_db_worst_s'])} | {r['bound_s']:g} s | "
            f"{_s(r['runtime_down_worst_s'])} | {r['calls']} | {r['failed_undelivered']} | "
            f"{r['failed_in_flight']} |"
        )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    plan = [(SETTINGS[0], 1 if args.quick else 2), (SETTINGS[1], 1 if args.quick else 3)]
    trials: list[Trial] = []
    for setting, count in plan:
        for n in range(count):
            print(
                f"[{time.strftime('%H:%M:%S')}] {setting.name}: trial {n + 1}/{count}", flush=True
            )
            trials.append(await run_trial(setting, rng))
    return {
        "benchmark": "failure_detection",
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "clients": CLIENTS,
        "trials": [asdict(t) for t in trials],
        "summary": summarize(trials),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--quick", action="store_true", help="one trial per setting")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    var = setup_django()
    try:
        results = asyncio.run(main_async(args))
    finally:
        from monitoring import probes

        probes.stop_process_loop()
        shutil.rmtree(var, ignore_errors=True)
    print_table(results["summary"])
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {args.json}")
    broken = [t for t in results["trials"] if t["errors"]]
    for t in broken:
        print(f"trial failed ({t['setting']}): {t['errors']}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
