"""`make run`'s launcher: what it gives the processes it starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_launcher_worker_metrics_port_defaults_to_the_documented_9808() -> None:
    # README: "Metrics ... on port 9808 of the worker (make run and docker-compose serve it)";
    # tests/monitoring/test_browser.py checks the worker really serves on the port it is given.
    env = {k: v for k, v in os.environ.items() if k != "MCPPOOL_WORKER_METRICS_PORT"}
    code = "import mcppool.launcher as launcher; print(launcher.WORKER_METRICS_PORT)"
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == "9808"
    readme = (ROOT / "README.md").read_text()
    assert "port 9808 of the worker" in readme
