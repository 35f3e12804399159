"""`make install` builds the project's own metadata: it must build without warnings."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_project_metadata_builds_without_deprecation_warnings(tmp_path: Path) -> None:
    # The build runs in pip's isolated environment with the setuptools `build-system` asks for;
    # the `project.license` table used to print ~30 lines of SetuptoolsDeprecationWarning there.
    # Built from a copy of the metadata and empty packages (as the Dockerfile does), so the
    # checkout gets no build/ or egg-info.
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for package in ("mcppool", "servers", "balancing", "monitoring"):
        (source / package).mkdir()
        (source / package / "__init__.py").touch()
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    warnings = re.findall(r"\w+Warning: .*", build.stdout + build.stderr)
    assert warnings == []
    assert list(wheels.glob("mcppool-*.whl"))
