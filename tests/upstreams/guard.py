"""`python guard.py <owner pid> -- <argv…>`: run argv so that it dies with its owner.

Fixture processes (upstream servers, gateways, workers) must not outlive a test run that is
killed (a timeout, Ctrl-C twice, SIGKILL): nothing in the killed process can clean up then. So
this wrapper first starts a watchdog (double-forked: it belongs to no one's wait list), then
becomes argv by `exec`, keeping its pid and process group (callers start it with
`start_new_session=True`). The watchdog checks every `PERIOD` seconds; when the owner is gone it
kills the whole process group (argv and whatever argv started in it), and when argv has ended it
simply leaves. Standard library only, run with `python -S`, so it costs a few milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

PERIOD = 0.25


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch(owner: int, target: int, group: int) -> None:
    while _alive(target):
        if not _alive(owner):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
            return
        time.sleep(PERIOD)  # a watchdog's poll period, not a test waiting


def main() -> None:
    owner = int(sys.argv[1])
    argv = sys.argv[3:] if sys.argv[2] == "--" else sys.argv[2:]
    target, group = os.getpid(), os.getpgrp()
    first = os.fork()
    if first == 0:
        if os.fork() == 0:
            os.closerange(0, 3)  # hold none of the caller's pipes open
            _watch(owner, target, group)
        os._exit(0)
    os.waitpid(first, 0)
    if not _alive(owner):
        os._exit(1)
    os.execvp(argv[0], argv)  # noqa: S606  # the fixture's own argv: becoming it is the point


if __name__ == "__main__":
    main()
