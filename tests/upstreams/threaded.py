"""A hand-written HTTP upstream for a test: an aiohttp handler served on 127.0.0.1 from a thread
with its own event loop, so it keeps answering whatever the test's own loop is doing."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web

from tests.upstreams import procs

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.contextmanager
def serve(handle: Handler, path: str = "/mcp") -> Iterator[str]:
    """Serve `handle` for every method on `path`; yields the URL, stops on exit."""
    port = procs.free_port()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application()
        app.router.add_route("*", path, handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        ready.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True
    )
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the test upstream did not start")
    try:
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        asyncio.run_coroutine_threadsafe(runners[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
