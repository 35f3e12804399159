"""A transparent HTTP forwarder that adds one header: `Authorization: Bearer <key>`.

The conformance suite sends no `Authorization` header and has no option for one, while every
pool endpoint of the gateway wants an API key. This sits between the two on 127.0.0.1 and
changes nothing else: method, path, query, every request header (`Host` and `Origin`
included, so DNS-rebinding checks still see what the suite sent), the body, the status, every
response header and the body streamed as it comes (SSE events reach the suite one by one,
which the round trips in the middle of a call need). The conformance test proves it by
running the suite through it against the fixture directly and getting the same verdicts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.upstreams.procs import free_port

# Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection, not to the message.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "content-length"}
)  # fmt: skip


def _end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in HOP_BY_HOP:
            kept.add(name, value)
    return kept


@contextlib.asynccontextmanager
async def forwarder(
    target: str, key: str, served_by: list[str] | None = None
) -> AsyncIterator[str]:
    """Serve a forwarder to `target` (scheme://host:port) on a free port; yields its base URL.
    `served_by` collects each answer's `X-Mcppool-Web` (the web process HAProxy chose)."""
    client = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type", "Accept"),
        cookie_jar=aiohttp.DummyCookieJar(),
    )

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = _end_to_end(request.headers)
        headers["Authorization"] = f"Bearer {key}"
        body = await request.read()
        async with client.request(
            request.method, target + request.rel_url.raw_path_qs, headers=headers,
            data=body if body else None, allow_redirects=False,
        ) as upstream:  # fmt: skip
            if served_by is not None:
                served_by.append(upstream.headers.get("X-Mcppool-Web", ""))
            response = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=_end_to_end(upstream.headers),
            )
            if upstream.headers.get("Content-Length") is not None:
                response.content_length = int(upstream.headers["Content-Length"])
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:  # the client went away: nothing left to forward to
                pass
            except aiohttp.ClientPayloadError:  # the upstream cut the body: cut it here too
                if request.transport is not None:
                    request.transport.close()
            return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    # Cancel a handler when its client goes away, so an open SSE stream does not outlive it.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await client.close()
