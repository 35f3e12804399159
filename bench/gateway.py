"""Run a real mcppool web process for a benchmark: its own database, pools and API key.

`prepare()` makes a throw-away var dir (SQLite database, secret key), migrates it, applies a
pools file and creates an API key for every pool — all in a child Python process, so the
benchmark's own process never imports Django. `start()` then serves `mcppool.asgi:application`
with uvicorn or daphne on a free port, exactly as `make run` / docker-compose do, and returns
once the REST API answers.

    .venv/bin/python -m bench.gateway prepare VAR_DIR POOLS_YAML   (prints the API key)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from tests.upstreams.procs import ROOT, UpstreamProcess, free_port, guarded

START_TIMEOUT = 60.0


@dataclass
class Gateway:
    """A running mcppool web process."""

    server: str  # "uvicorn" or "daphne"
    process: UpstreamProcess
    token: str
    var_dir: Path
    env: dict[str, str] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.process.port}"

    def rest_url(self, pool: str, tool: str = "echo") -> str:
        return f"{self.base_url}/api/v1/pools/{pool}/tools/{tool}/call"

    def mcp_url(self, pool: str) -> str:
        return f"{self.base_url}/mcp/{pool}/"

    def stop(self) -> None:
        self.process.stop()


def pools_file(pools: list[dict[str, Any]], directory: Path) -> Path:
    path = directory / "pools.yaml"
    path.write_text(yaml.safe_dump({"pools": pools}, sort_keys=False))
    return path


def environment(var_dir: Path, root: Path = ROOT) -> dict[str, str]:
    """The process environment; `root`: the source tree to serve (another commit's, for
    `bench.versus`), first on the import path."""
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "MCPPOOL_VAR_DIR": str(var_dir),
        "DJANGO_SETTINGS_MODULE": "mcppool.settings",
        "DEBUG": "0",
    }
    # The embedded default: SQLite, in-memory channel layer, no Redis on the hot path.
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    # The stdio upstream the benchmark runs (the command policy allows nothing else by default).
    env.setdefault("MCPPOOL_STDIO_COMMANDS", "python -m tests.upstreams.faulty")
    return env


def prepare(
    pools: list[dict[str, Any]], var_dir: Path | None = None, root: Path = ROOT
) -> tuple[Path, str]:
    """A migrated database holding `pools`, and an API key allowed on all of them (by the code
    of the source tree `root`)."""
    var_dir = var_dir or Path(tempfile.mkdtemp(prefix="mcppool-bench-"))
    path = pools_file(pools, var_dir)
    done = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "prepare", str(var_dir), str(path)],
        cwd=root,
        env=environment(var_dir, root),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"preparing the gateway failed:\n{done.stdout}\n{done.stderr}")
    return var_dir, done.stdout.strip().splitlines()[-1]


def command(server: str, port: int) -> list[str]:
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                "mcppool.asgi:application"]  # fmt: skip
    return [sys.executable, "-m", "uvicorn", "mcppool.asgi:application", "--host", "127.0.0.1",
            "--port", str(port), "--lifespan", "on", "--no-access-log",
            "--timeout-graceful-shutdown", "10"]  # fmt: skip


def start(
    var_dir: Path,
    token: str,
    *,
    server: str = "uvicorn",
    ready_path: str = "",
    extra_env: dict[str, str] | None = None,
    root: Path = ROOT,
) -> Gateway:
    """Serve the prepared var dir; returns once `ready_path` (a REST call URL) answers 200.
    `extra_env`: more environment for the process (tracing's `OTEL_*`, say); `root`: the
    source tree to serve."""
    port = free_port()
    env = {**environment(var_dir, root), **(extra_env or {})}
    log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by UpstreamProcess.stop
    process = subprocess.Popen(
        guarded(command(server, port)),
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    gateway = Gateway(server, UpstreamProcess(f"mcppool-{server}", process, port, log), token,
                      var_dir, env)  # fmt: skip
    if not _wait_ready(gateway, ready_path):
        output = gateway.process.output()
        gateway.stop()
        raise RuntimeError(f"mcppool under {server} did not come up:\n{output}")
    return gateway


def _wait_ready(gateway: Gateway, ready_path: str) -> bool:
    """Poll until the process answers (the runtime opens its upstream sessions on start)."""
    deadline = time.monotonic() + START_TIMEOUT
    url = gateway.base_url + (ready_path or "/admin/login/")
    body = b'{"arguments": {"text": "ready"}}' if ready_path else None
    headers = {"Authorization": f"Bearer {gateway.token}", "Content-Type": "application/json"}
    while time.monotonic() < deadline:
        if gateway.process.process.poll() is not None:
            return False
        try:
            request = urllib.request.Request(url, data=body, headers=headers)
            with urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 200:
                    return True
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.3)
    return False


def _prepare_here(var_dir: str, pools_yaml: str) -> None:
    """In the child: migrate, apply the pools file, print a new all-pools API key."""
    import django

    django.setup()
    from django.core.management import call_command

    from servers import services

    call_command("migrate", interactive=False, verbosity=0)
    call_command("mcppool", "apply", pools_yaml, verbosity=0)
    _, secret = services.create_api_key("bench", all_pools=True)
    print(secret)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "prepare":
        _prepare_here(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
