"""The `mcppool` console script: its own subcommands, and manage.py's through it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pools.yaml"


def _mcppool(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(MCPPOOL_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="mcppool.settings")
    code = f"import sys; from mcppool.cli import main; sys.argv = {['mcppool', *args]!r}; main()"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_apply_then_export_round_trips_the_example(tmp_path: Path) -> None:
    assert _mcppool(tmp_path, "migrate", "-v", "0").returncode == 0  # a manage.py command
    applied = _mcppool(tmp_path, "apply", str(EXAMPLE))
    assert applied.returncode == 0, applied.stderr
    exported = _mcppool(tmp_path, "export")
    assert exported.returncode == 0, exported.stderr
    assert "slug: time" in exported.stdout
    assert "name: time-2" in exported.stdout
    again = _mcppool(tmp_path, "apply", str(EXAMPLE))
    assert "no changes" in again.stdout


def test_cli_apply_missing_file_fails_with_message(tmp_path: Path) -> None:
    result = _mcppool(tmp_path, "apply", str(tmp_path / "nope.yaml"))
    assert result.returncode != 0
    assert "nope.yaml" in result.stderr
