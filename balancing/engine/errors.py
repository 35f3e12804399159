"""Why a call to an upstream MCP server did not produce a result.

The balancer and the runtime decide two things from these exceptions:

* **retry elsewhere?** Only when ``delivered`` is False (the server never saw the call) or the
  tool is safe to repeat (``readOnlyHint`` / ``idempotentHint``). A call that may have run must not
  run twice by accident.
* **blame the server?** ``server_failure`` feeds passive health (outlier detection). Transport
  failures, timeouts, protocol garbage and JSON-RPC *internal* errors (-32603) count; a JSON-RPC
  error the server chose to answer (unknown tool, bad params) does not, and neither does a tool
  result with ``isError: true`` (that is a normal result, never an exception here).

| exception        | delivered | server_failure |
|------------------|-----------|----------------|
| ConnectFailed    | False     | True           |
| SessionGone      | False     | False          |
| UpstreamTimeout  | True      | True           |
| UpstreamClosed   | True      | True           |
| ProtocolError    | True*     | True           |
| UpstreamRefused  | False     | False          |
| CallRejected     | True      | only for -32603|

(*) a 5xx without a JSON-RPC answer may have run part of the call. An HTTP 4xx without a JSON-RPC
answer is an ``UpstreamRefused``: the server refused the request before running it, which says
something about the request (a client's bad input), not about the server's health.

``SessionGone`` is not a server failure: the server forgot our session (restart, idle expiry) and
the pool simply opens a new one.
"""

from __future__ import annotations

from typing import Any

INTERNAL_ERROR = -32603


class UpstreamError(Exception):
    """Base of every failure talking to one upstream server."""

    delivered: bool = True

    def __init__(self, message: str, *, server: str = "", delivered: bool | None = None) -> None:
        super().__init__(message)
        self.server = server
        if delivered is not None:
            self.delivered = delivered

    def __str__(self) -> str:
        text = super().__str__()
        return f"{self.server}: {text}" if self.server else text

    @property
    def server_failure(self) -> bool:
        """Does this failure count against the server's health (outlier detection)?"""
        return True


class ConnectFailed(UpstreamError):
    """Could not connect or spawn: the request never left this process."""

    delivered = False


class SessionGone(UpstreamError):
    """The upstream session no longer exists (HTTP 404 for our session id, or the stdio process
    had already exited): the request was not processed; re-open the session and retry."""

    delivered = False

    @property
    def server_failure(self) -> bool:
        return False


class UpstreamTimeout(UpstreamError):
    """No answer within the call's timeout; the server may still be running the call."""


class UpstreamClosed(UpstreamError):
    """The connection dropped or the process died while the call was in flight."""


class ProtocolError(UpstreamError):
    """The server answered something that is not a valid MCP/JSON-RPC answer (bad JSON, an
    unexpected HTTP status, a response without our id...)."""


class UpstreamRefused(ProtocolError):
    """An HTTP 4xx without a JSON-RPC answer: the request was refused before it ran."""

    delivered = False

    def __init__(self, message: str, *, status: int, server: str = "") -> None:
        super().__init__(message, server=server)
        self.status = status

    @property
    def server_failure(self) -> bool:
        return False


class CallRejected(UpstreamError):
    """The server answered the call with a JSON-RPC error object (kept verbatim in ``error``)."""

    def __init__(self, error: dict[str, Any], *, server: str = "") -> None:
        self.error = error
        super().__init__(f"JSON-RPC error {self.code}: {error.get('message', '')}", server=server)

    @property
    def code(self) -> int:
        code = self.error.get("code")
        return code if isinstance(code, int) else 0

    @property
    def server_failure(self) -> bool:
        # An internal error says the server is broken; any other code is the server correctly
        # refusing this particular call.
        return self.code == INTERNAL_ERROR
