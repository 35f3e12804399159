"""Run the official MCP conformance suite's server scenarios and read its verdicts.

The suite (`@modelcontextprotocol/conformance`, pinned in tests/upstreams/node/package.json)
is a node ≥ 22 program; `make node` installs it and a node 22 binary from npm. It writes one
`checks.json` per scenario under `--output-dir` (`server-<scenario>-<timestamp>/`): a list of
checks, each with an `id` and a `status` (SUCCESS, FAILURE, WARNING, SKIPPED, INFO). A
scenario passes when none of its checks failed — what the suite's own ✓/✗ line says, read
from the machine-readable file instead of the text.

`--requirements <revision>` runs exactly what a spec revision requires, at that revision's
wire (2025-11-25: the initialize handshake; 2026-07-28: stateless, per-request `_meta`), plus
its not-scored scenarios (the pending header scenarios `http-header-validation` and
`http-custom-header-server-validation` run in the 2026-07-28 set this way).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.upstreams.procs import CONFORMANCE_JS, NODE22, ROOT

REQUIREMENTS = ("2026-07-28", "2025-11-25")
# Per scenario (the suite's default): a scenario that passes takes well under a second, but
# the machine running CI may be shared and loaded.
SCENARIO_TIMEOUT_MS = 30_000
RUN_TIMEOUT = 600.0
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")


def installed() -> bool:
    return NODE22.exists() and CONFORMANCE_JS.exists()


@functools.cache
def required(requirements: str) -> frozenset[str]:
    """The server scenarios a revision requires (the suite's frozen requirement set); the
    others a `--requirements` run reports are not scored (extensions, pending ones)."""
    path = CONFORMANCE_JS.parents[1] / "requirements" / f"{requirements}.yaml"
    return frozenset(yaml.safe_load(path.read_text())["server"])


@dataclass(frozen=True)
class Scenario:
    """One scenario's verdict: the ids and messages of its failed checks (none = passed), and
    the ids of the checks it skipped (a feature the server did not offer)."""

    name: str
    checks: int
    failures: tuple[str, ...] = ()
    skipped: frozenset[str] = frozenset()

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class Run:
    """One invocation of the suite against one URL."""

    label: str
    url: str
    requirements: str
    scenarios: dict[str, Scenario] = field(default_factory=dict)
    output: str = ""
    seconds: float = 0.0
    retried: list[str] = field(default_factory=list)

    def passed(self) -> set[str]:
        return {name for name, scenario in self.scenarios.items() if scenario.passed}

    def failed(self) -> set[str]:
        return set(self.scenarios) - self.passed()

    def counts(self) -> str:
        """`required passed/required run, not scored passed/run`, as the suite scores them."""
        scored = required(self.requirements)
        ran, passed = set(self.scenarios), self.passed()
        return (
            f"required {len(passed & scored)}/{len(ran & scored)}, "
            f"not scored {len(passed - scored)}/{len(ran - scored)}"
        )

    def why(self, name: str) -> str:
        scenario = self.scenarios.get(name)
        if scenario is None:
            return f"{name}: no result written"
        return f"{name}: " + "; ".join(scenario.failures)[:600]


def read_results(directory: Path) -> dict[str, Scenario]:
    """Every scenario's verdict from a `--output-dir`."""
    scenarios: dict[str, Scenario] = {}
    for path in sorted(directory.glob("server-*/checks.json")):
        match = _RESULT_DIR.match(path.parent.name)
        if match is None:
            continue
        checks = json.loads(path.read_text())
        failures = tuple(
            f"{check.get('id')}: {check.get('errorMessage', '')}".strip()
            for check in checks
            if check.get("status") == "FAILURE"
        )
        skipped = frozenset(str(c.get("id")) for c in checks if c.get("status") == "SKIPPED")
        name = match["scenario"]
        scenarios[name] = Scenario(name, len(checks), failures, skipped)
    return scenarios


def command(url: str, output_dir: Path, *selection: str) -> list[str]:
    return [
        str(NODE22), str(CONFORMANCE_JS), "server", "--url", url, *selection,
        "--timeout", str(SCENARIO_TIMEOUT_MS), "--output-dir", str(output_dir),
    ]  # fmt: skip


async def _suite(url: str, *selection: str) -> tuple[dict[str, Scenario], str]:
    """One suite process; the verdicts it wrote and its console output."""
    with tempfile.TemporaryDirectory(prefix="mcppool-conformance-") as tmp:
        process = await asyncio.create_subprocess_exec(
            *command(url, Path(tmp), *selection),
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            stdout, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        return read_results(Path(tmp)), stdout.decode(errors="replace")


async def run(label: str, url: str, requirements: str, *, no_retry: Collection[str] = ()) -> Run:
    """Run one requirement set against `url`; every scenario's verdict.

    A scenario that fails is run once more on its own, at the same wire (`--scenario
    --spec-version`), and the second verdict stands: on a loaded machine a scenario can time
    out or lose a connection for reasons of the machine, not of the server (the mcp SDK's own
    CI re-verifies failures the same way). Those that passed only then are listed in
    `Run.retried`. `no_retry`: scenarios known to fail for good (nothing to learn twice).
    """
    result = Run(label, url, requirements)
    started = time.monotonic()
    result.scenarios, result.output = await _suite(url, "--requirements", requirements)
    for name in sorted(result.failed() - set(no_retry)):
        again, _ = await _suite(url, "--scenario", name, "--spec-version", requirements)
        second = again.get(name)
        if second is not None and second.checks and second.passed:
            result.scenarios[name] = second
            result.retried.append(name)
    result.seconds = time.monotonic() - started
    return result
