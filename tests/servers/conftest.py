from __future__ import annotations

from typing import Any

import pytest

from servers import services
from servers.models import AffinityRule, Pool, Server


@pytest.fixture
def pool(db: Any) -> Pool:
    return services.save(Pool(name="Time", slug="time"))


@pytest.fixture
def http_server(pool: Pool) -> Server:
    return services.save(
        Server(pool=pool, name="a", transport="streamable_http", url="http://127.0.0.1:9/mcp")
    )


@pytest.fixture
def stdio_server(pool: Pool) -> Server:
    return services.save(
        Server(pool=pool, name="b", transport="stdio", command="python", args=["-m", "x"])
    )


@pytest.fixture
def rule(http_server: Server) -> AffinityRule:
    """A rule pinning header X-Tenant: acme to server `a`."""
    return services.save(
        AffinityRule(
            pool=http_server.pool,
            match_on="header",
            header="X-Tenant",
            pattern="acme",
            action="pin",
            pin_server=http_server,
        )
    )
