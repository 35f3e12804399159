"""Whether a failed call may be tried again on another server, and a budget against retry storms.

A retry must not run a tool twice unless that is harmless: a call that never reached a server can
always go elsewhere; one that did may only be repeated when the tool says it is read-only or
idempotent (MCP tool annotations). The budget is Envoy's `retry_budget`: retries in progress may
not exceed `percent` of the calls in progress, with a floor of `minimum` so a quiet pool can still
retry. When a whole pool is failing, this keeps upstream attempts near 1.2 × client calls instead
of multiplying them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from balancing.engine.config import RetryPolicy

# tools/list gives camelCase; a runtime holding SDK models dumped without aliases has snake_case.
_SAFE_HINTS = ("readOnlyHint", "idempotentHint", "read_only_hint", "idempotent_hint")


def may_retry(
    policy: RetryPolicy, delivered: bool, annotations: Mapping[str, object] | None
) -> bool:
    """May this failed call be sent to another server (budget aside)?

    `delivered` = the request may have reached the server (it was written to a live session).
    """
    if policy == RetryPolicy.NEVER:  # ==, not `is`: a plain "never" string is the same policy
        return False
    if not delivered:
        return True
    if policy != RetryPolicy.SAFE or not annotations:
        return False
    # Only a real `true` counts: hints are untrusted, and absence means "may have side effects".
    return any(annotations.get(hint) is True for hint in _SAFE_HINTS)


class RetryBudget:
    """Counts calls and retries in progress for one pool; refuses retries beyond the budget.

    Calls are counted once however many attempts they make, so the budget is a share of what
    clients asked for.
    """

    __slots__ = (
        "active_calls",
        "active_retries",
        "minimum",
        "percent",
        "refused_total",
        "retries_total",
    )

    def __init__(self, percent: float = 20.0, minimum: int = 3) -> None:
        self.percent = percent
        self.minimum = minimum
        self.active_calls = 0
        self.active_retries = 0
        self.retries_total = 0
        self.refused_total = 0

    def call_started(self) -> None:
        self.active_calls += 1

    def call_finished(self) -> None:
        if self.active_calls > 0:
            self.active_calls -= 1

    def limit(self) -> int:
        """How many retries may be in progress right now."""
        return max(self.minimum, math.floor(self.percent / 100.0 * self.active_calls + 1e-9))

    def try_retry(self) -> bool:
        """Take a retry slot if the budget allows; pair a True with `retry_finished()`."""
        if self.active_retries >= self.limit():
            self.refused_total += 1
            return False
        self.active_retries += 1
        self.retries_total += 1
        return True

    def retry_finished(self) -> None:
        if self.active_retries > 0:
            self.active_retries -= 1
