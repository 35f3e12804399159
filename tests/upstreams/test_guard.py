"""A killed test run leaves no upstream behind: the fixture process dies with the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.upstreams import procs

INNER = """
import threading
from pathlib import Path

from tests.upstreams import procs


def test_holds_an_upstream() -> None:
    upstream = procs.start_faulty_http(name="orphan-check")
    Path({pid_file!r}).write_text(str(upstream.pid))
    threading.Event().wait()  # until the run is killed
"""


def _until(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); it is dead for every purpose here
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] == "Z"


def test_upstream_of_a_killed_test_run_dies_with_it(tmp_path: Path) -> None:
    # given a pytest run that started an upstream server and holds it
    pid_file = tmp_path / "upstream.pid"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(INNER.format(pid_file=str(pid_file)))
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:django",
         "-c", os.devnull, "--rootdir", str(tmp_path), str(test_file)],
        cwd=procs.ROOT, env={**os.environ, "PYTHONPATH": str(procs.ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        assert _until(lambda: pid_file.exists() and pid_file.read_text(), 60), "no upstream"
        upstream = int(pid_file.read_text())
        assert not _gone(upstream)
        # when the run is killed outright (nothing in it can clean up)
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        # then its upstream does not outlive it
        assert _until(lambda: _gone(upstream), 10), f"upstream {upstream} outlived the run"
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(10)
