"""A client session's traffic that lands on another web process than the one it is for.

Behind a load balancer without affinity, each of a client's requests may reach any web process;
two kinds of message must still reach one particular process, and travel over the channel layer
(Redis) to it:

* **The answer to a relayed request.** A server→client request (sampling, elicitation, roots)
  waits for the client's answer in the process that relayed it; its gateway id names that
  process's channel (`mcppool-<n>@<channel>`), so the process the answer is POSTed to passes it
  on (one Redis message).
* **A shared pool's client's log level** (`logging/setLevel`, handshake era), which the gateway
  sends along with each of that client's calls: told to every process (one group message), so
  each copy of the session sends it, and a process that continues the session later starts with
  it.
* **Where the client's GET stream is.** An HTTP server allows one GET stream per session, and
  its messages must reach the process serving the client's GET stream. The process the client's
  GET lands on tells the others (one group message per stream opened); whichever process holds
  the server's GET stream passes what arrives on it there (one Redis message each), so the
  server's stream never moves while both live — no gap in which the server would drop a message.
  The new process also asks for the server's stream, and gets it once its holder is gone.

Without a channel layer (the embedded default) or with Redis away, relayed answers reach only
the process that asked, and messages outside calls only the process holding the server's GET
stream: calls are unaffected.
"""

from __future__ import annotations

from typing import Any

from balancing.engine.sticky import ClientSession
from balancing.host import (
    CHANNEL_PREFIX,
    SESSION_ANSWER,
    SESSION_LEVEL,
    SESSION_STREAM,
    get_host,
)


def relay_id(session: ClientSession) -> str:
    """A gateway id for a request relayed to the client, naming where its answer is awaited."""
    local = session.relay_id()
    channel = get_host().channel
    return f"{local}@{channel}" if channel else local


async def pass_answer(session: ClientSession, message: dict[str, Any]) -> bool:
    """Send the client's answer to the process that relayed the request; False: none waits."""
    relay = str(message.get("id"))
    _, _, channel = relay.partition("@")
    host = get_host()
    if not channel.startswith(CHANNEL_PREFIX) or channel == host.channel:
        return False
    payload = {"type": SESSION_ANSWER, "session": session.id, "relay": relay, "message": message}
    return await host.send_to(channel, payload)


async def share_level(session: ClientSession) -> None:
    """The client set its log level here: every process's copy of the session takes it."""
    message = {"type": SESSION_LEVEL, "session": session.id, "level": session.log_level}
    await get_host().tell_all(message)


async def claim_stream(session: ClientSession) -> None:
    """This process now serves the client's GET stream: whichever process holds the server's
    GET stream sends what arrives on it here; if none does (it died), this one takes it."""
    if session.upstream is None:
        return
    host = get_host()
    session.stream_at = ""
    await host.tell_all({"type": SESSION_STREAM, "session": session.id, "channel": host.channel})
    await session.upstream.listen()


def to_stream(session: ClientSession, message: dict[str, Any]) -> None:
    """A message for the client's GET stream: queued here, or sent to the process serving it.
    Raises QueueFull when the local queue is full."""
    if session.stream_at:
        get_host().pass_events(session.id, session.stream_at, [message])
    elif session.events is not None:
        session.events.put_nowait(message)
