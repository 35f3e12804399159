"""CPU to start the `mcppool` command for work that needs no upstream.

    .venv/bin/python -m bench.cli_startup [--runs 5] [--json FILE] [--update-results]

Runs `mcppool --help` and `mcppool export` (on an empty SQLite database in a scratch directory,
migrated once beforehand) `--runs` times each in fresh interpreters, and reports the median CPU
(user + system, from `os.wait4`) of one run. Every `mcppool` command pays this start-up; it used to
be 2–2.5 s because Django start-up imported the mcp SDK and the transports (issue 16).
`--update-results` writes the two figures into `bench/results.json` without rerunning the rest
of `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.stats import median

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
COMMANDS: dict[str, tuple[str, ...]] = {"help": ("--help",), "export": ("export",)}


def _environment(var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(MCPPOOL_VAR_DIR=str(var_dir), DJANGO_SETTINGS_MODULE="mcppool.settings")
    env["PYTHONPATH"] = str(ROOT)
    return env


def cpu_ms(args: tuple[str, ...], env: dict[str, str]) -> float:
    """CPU milliseconds of one `mcppool ARGS` run, the way the console script starts it."""
    code = f"import sys; from mcppool.cli import main; sys.argv = {['mcppool', *args]!r}; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"mcppool {' '.join(args)} failed: {process.stderr.read()!r}")  # type: ignore[union-attr]
    return (usage.ru_utime + usage.ru_stime) * 1000


def measure(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mcppool-cli-bench-") as scratch:
        env = _environment(Path(scratch))
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "-v", "0"],
            cwd=ROOT,
            env=env,
            check=True,
        )
        samples = {
            name: [cpu_ms(args, env) for _ in range(runs)] for name, args in COMMANDS.items()
        }
    return {
        **{f"cli_cpu_ms_{name}": median(values) for name, values in samples.items()},
        "samples_ms": samples,
        "runs": runs,
        "command": f"python -m bench.cli_startup --runs {runs}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--update-results", action="store_true", help="write them into bench/results.json"
    )
    args = parser.parse_args()
    data = measure(args.runs)
    for name in COMMANDS:
        print(f"mcppool {' '.join(COMMANDS[name])}: {data[f'cli_cpu_ms_{name}']:.0f} ms CPU")
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    if args.update_results:
        results = json.loads(RESULTS.read_text())
        results.update({k: v for k, v in data.items() if k.startswith("cli_cpu_ms_")})
        results["cli_startup"] = data
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
