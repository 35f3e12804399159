from __future__ import annotations

from typing import Any

import pytest

from servers import services
from servers.models import Pool, Server


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
