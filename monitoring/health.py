"""The arithmetic of active health checks: hysteresis, when to list tools, who differs.

Pure functions of plain values (no Django, no clock of its own), so every rule is tested on
numbers. `monitoring.checks` reads the row, asks here, and writes what comes back.

States and how active checks move a server between them (HAProxy's fall/rise):

    unknown ──1 success──▶ up            (one success at start: a new server serves at once)
    unknown ──fall failures──▶ down
    up / recovering / ejected ──fall failures in a row──▶ down
    down ──rise successes in a row──▶ recovering (ramping back in) ──slow-start window──▶ up
    ejected ──1 success──▶ up            (Envoy: a passing active check ends an ejection)

A single success or failure never flips a server that is in a steady state the other way, so a
flapping server (ok, fail, ok, fail…) never spins the state: its counters reset each time and
neither threshold is ever reached. `recovering` counts as serving (the runtime ramps its weight
from 10 % over the pool's slow-start window); failures there count toward `fall` as for `up`.
Passive ejection (`ejected`) is written by the runtime, not here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from balancing.engine.config import Health

# A server in service re-reads its tool list on every this many-th consecutive passing check
# (about once a minute at the default 5 s interval); coming back or never listed, at once.
TOOLS_EVERY_CHECKS = 12


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one check result does to a server: new counters, and maybe a new state."""

    consecutive_ok: int
    consecutive_failed: int
    health: Health | None = None  # None: the state stays as it is
    reason: str = ""


def judge(
    current: Health,
    *,
    consecutive_ok: int,
    consecutive_failed: int,
    ok: bool,
    fall: int,
    rise: int,
    since_change: float = float("inf"),
    slow_start_window: float = 0.0,
    error: str = "",
) -> Verdict:
    """Account one check result against the stored counters and state.

    `since_change` is how long ago (seconds) the state last changed; it ends `recovering` once the
    pool's slow-start window has passed.
    """
    if ok:
        good, bad = consecutive_ok + 1, 0
        new = _after_success(current, good, rise, since_change, slow_start_window)
        reason = _success_reason(current, new, good)
    else:
        good, bad = 0, consecutive_failed + 1
        new = Health.DOWN if current is not Health.DOWN and bad >= fall else None
        reason = f"{bad} failed check{'s' if bad != 1 else ''} in a row"
        reason += f": {error}" if error else ""
    return Verdict(good, bad, new, reason if new is not None else "")


def _after_success(
    current: Health, good: int, rise: int, since_change: float, window: float
) -> Health | None:
    if current in (Health.UNKNOWN, Health.EJECTED):
        return Health.UP
    if current is Health.DOWN and good >= rise:
        return Health.RECOVERING if window > 0 else Health.UP
    if current is Health.RECOVERING and since_change >= window:
        return Health.UP
    return None


def _success_reason(current: Health, new: Health | None, good: int) -> str:
    if new is None:
        return ""
    if current is Health.UNKNOWN:
        return "first check passed"
    if current is Health.EJECTED:
        return "active check passed: ejection ended"
    if new is Health.RECOVERING:
        return f"{good} passed checks in a row: ramping back in"
    if current is Health.RECOVERING:
        return "slow start over"
    return f"{good} passed checks in a row"


def wants_tool_list(current: Health, *, consecutive_ok: int, tools_hash: str) -> bool:
    """Should this check also read `tools/list`? Never listed, not steadily up, or now and then."""
    if not tools_hash or current is not Health.UP:
        return True
    return (consecutive_ok + 1) % TOOLS_EVERY_CHECKS == 0


def differing(hashes: Mapping[int, str]) -> set[int]:
    """The servers whose tool-set hash differs from their pool siblings'.

    The most common hash is the pool's tool set; servers with another one differ. When no hash is
    most common (a tie, e.g. two servers that disagree), nobody can say which is right, so every
    server with a known hash is flagged. Servers not listed yet (empty hash) are never flagged.
    """
    known = {server_id: h for server_id, h in hashes.items() if h}
    counts = Counter(known.values()).most_common()
    if len(counts) <= 1:
        return set()
    if counts[0][1] == counts[1][1]:
        return set(known)
    majority = counts[0][0]
    return {server_id for server_id, h in known.items() if h != majority}
