"""The `mcppool` console script: its own subcommands, and manage.py's through it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pools.yaml"


# Packages only the data plane (or daphne's runserver) needs: a command that talks to no
# upstream must not load them.
DATA_PLANE = ("mcp", "mcp_types", "aiohttp", "twisted")
SHOW_DATA_PLANE = (
    f"print('loaded:', sorted({{m.split('.')[0] for m in sys.modules}} & {set(DATA_PLANE)!r}))"
)


def _mcppool(tmp_path: Path, *args: str, then: str = "") -> subprocess.CompletedProcess[str]:
    """Run the console script's `main` in a fresh interpreter, then the Python code `then`."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(MCPPOOL_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="mcppool.settings")
    code = f"import sys; from mcppool.cli import main; sys.argv = {['mcppool', *args]!r}; main()"
    code += f"; {then}" if then else ""
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


def test_cli_commands_without_upstreams_do_not_load_the_data_plane(tmp_path: Path) -> None:
    # The mcp SDK and the transports cost over a second of CPU to import (`make bench`:
    # cli_cpu_ms); Django start-up used to pull them in through the admin and the URL checks.
    assert _mcppool(tmp_path, "migrate", "-v", "0").returncode == 0
    for args in (("--help",), ("export",), ("apply", "--dry-run", str(EXAMPLE))):
        result = _mcppool(tmp_path, *args, then=SHOW_DATA_PLANE)
        assert result.returncode == 0, result.stderr
        assert "loaded: []" in result.stdout, (args, result.stdout[-300:])
