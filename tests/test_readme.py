"""The README tells a newcomer the truth about configuration: every variable `make run` reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# What `make run` runs: the launcher, the settings every process loads, the Celery app and the
# worker's metrics server.
READ_BY_MAKE_RUN = (
    "mcppool/launcher.py",
    "mcppool/settings.py",
    "mcppool/celery.py",
    "monitoring/worker_metrics.py",
)
READS = re.compile(
    r"""(?:env_(?:str|int|bool|float|list)|environ\.get|environ\.setdefault)\(\s*"([A-Z][A-Z0-9_]+)"
       |_ENV\s*=\s*"([A-Z][A-Z0-9_]+)\"""",
    re.VERBOSE,
)
NOT_CONFIGURATION = {"DJANGO_SETTINGS_MODULE"}  # set by the entry points themselves


def _configuration_table() -> str:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def test_readme_documents_every_variable_make_run_reads() -> None:
    read = {
        name
        for path in READ_BY_MAKE_RUN
        for match in READS.finditer((ROOT / path).read_text())
        for name in match.groups()
        if name
    } - NOT_CONFIGURATION
    assert {
        "MCPPOOL_PORT",
        "MCPPOOL_HOST",
        "MCPPOOL_WORKER_METRICS_PORT",
    } <= read  # the regex works
    table = _configuration_table()
    missing = sorted(name for name in read if f"`{name}`" not in table)
    assert missing == []


def test_readme_examples_say_which_port_they_assume() -> None:
    # the first command a newcomer copies names port 8000; by then the README has said why
    first_example = README.index("```sh\ncurl -s http://127.0.0.1:8000")
    before = README[:first_example]
    assert re.search(r"examples[^.]*use port 8000[^.]*MCPPOOL_PORT", before, re.DOTALL)
