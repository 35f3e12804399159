"""Issue 13, attack 6: `http://169.254.169.254/…` (cloud metadata) and `http://127.0.0.1:6379/`
(the broker) were accepted as server URLs. The outbound policy refuses them when a URL is saved
and again on every address a connection is about to use (after DNS, so a rebound name is
refused too)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from asgiref.sync import sync_to_async

from balancing.engine.config import Era, ServerConfig, Transport
from balancing.engine.errors import UpstreamError
from balancing.engine.policy import OutboundPolicy, PolicyRefused
from balancing.engine.transport_http import client_session
from balancing.engine.upstream import UpstreamSession
from servers import configfile, services
from servers.models import Pool, Server
from tests.api.gateway import add_key, add_pool, db_state, serve_gateway
from tests.security.conftest import Listener

DEFAULT = OutboundPolicy.build(services=[("127.0.0.1", 5432), ("localhost", 6379)])


def _refused(policy: OutboundPolicy, url: str) -> str:
    with pytest.raises(PolicyRefused) as caught:
        policy.check_url(url)
    return caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/mcp",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0:8080/mcp",
        "http://100.100.100.200/",
    ],
)
def test_default_policy_refuses_link_local_and_metadata(url: str) -> None:
    assert "denied network" in _refused(DEFAULT, url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5432/",
        "http://127.0.0.2:5432/",
        "http://[::1]:5432/",
        "http://localhost:6379/",
        "http://127.0.0.1:6379/",
    ],
)
def test_default_policy_refuses_the_services_own_database_and_broker(url: str) -> None:
    assert "database/broker" in _refused(DEFAULT, url)


def test_default_policy_allows_loopback_and_private_until_denied() -> None:
    for url in ("http://127.0.0.1:8000/mcp", "http://10.1.2.3/mcp", "http://localhost:6380/"):
        DEFAULT.check_url(url)
    strict = OutboundPolicy.build(deny_private=True)
    assert "denied network" in _refused(strict, "http://127.0.0.1:8000/mcp")
    assert "denied network" in _refused(strict, "http://192.168.1.10/mcp")
    assert "denied network" in _refused(strict, "http://localhost:8000/mcp")
    OutboundPolicy.build(deny_private=True, allow=["10.0.0.0/8"]).check_url("http://10.1.2.3/")
    OutboundPolicy.build(allow=["169.254.170.2/32"]).check_url("http://169.254.170.2/v2/")
    assert "denied network" in _refused(
        OutboundPolicy.build(deny=["203.0.113.0/24"]), "https://203.0.113.9/mcp"
    )


@pytest.mark.django_db(transaction=True)
async def test_rest_metadata_url_is_refused_and_nothing_written() -> None:
    await sync_to_async(add_pool)("p", [])
    admin = await sync_to_async(add_key)("admin", all_pools=True, is_admin=True)
    async with serve_gateway() as gw:
        before = await sync_to_async(db_state)()
        response = await gw.http.post(
            f"{gw.url}/api/v1/pools/p/servers",
            json={
                "name": "meta",
                "transport": "streamable_http",
                "url": "http://169.254.169.254/latest/meta-data/",
            },
            headers={"Authorization": f"Bearer {admin}"},
        )
        body = await response.json()
        assert response.status == 400, body
        assert body["error"]["code"] == "invalid_request"
        assert "denied network" in body["error"]["errors"]["url"][0]
        assert await sync_to_async(db_state)() == before


@pytest.mark.django_db
def test_broker_url_is_refused_in_the_model(redis_url: str) -> None:
    broker = urlsplit(redis_url)
    pool = services.save(Pool(name="P", slug="p"))
    url = f"http://{broker.hostname}:{broker.port or 6379}/"
    with pytest.raises(Exception, match="database/broker"):
        services.save(Server(pool=pool, name="b", transport="streamable_http", url=url))
    assert not Server.objects.exists()


@pytest.mark.django_db
def test_apply_metadata_url_reports_file_and_line() -> None:
    text = """pools:
  - slug: p
    name: P
    servers:
      - name: meta
        transport: streamable_http
        url: http://169.254.169.254/latest/meta-data/
"""
    with pytest.raises(configfile.ConfigFileError) as caught:
        configfile.apply_text(text, "pools.yaml", dry_run=True)
    assert (
        "pools.yaml:7: pools[0].servers[0].url: 169.254.169.254:80 is in a denied network"
        in str(caught.value)
    )


async def _open(url: str, outbound: OutboundPolicy) -> None:
    server = ServerConfig(id=1, name="rebound", transport=Transport.STREAMABLE_HTTP, url=url,
                          era=Era.HANDSHAKE)  # fmt: skip
    http = client_session(outbound)
    try:
        session = await UpstreamSession.open(
            server, http=http, client_info={}, capabilities={}, timeout=5.0
        )
        await session.close()
    finally:
        await http.close()


async def test_connect_time_check_refuses_a_name_that_now_resolves_to_a_denied_address(
    listener: Listener,
) -> None:
    # given a name saved while it resolved to an allowed address, resolving now to a denied one
    # (here: `localhost`, with loopback denied at connect time)
    url = f"http://localhost:{listener.port}/mcp"
    with pytest.raises(UpstreamError, match="outbound policy"):
        await _open(url, OutboundPolicy.build(deny_private=True))
    # then not one connection reached the listener
    assert listener.connections == 0
    assert not listener.received

    # control: the same connection with loopback allowed does reach it
    with pytest.raises(UpstreamError):
        await _open(url, OutboundPolicy.build())
    assert listener.connections > 0
    assert b"POST" in listener.received


def test_socket_factory_refuses_denied_addresses_with_an_os_error() -> None:
    import socket

    with pytest.raises(OSError, match="outbound policy"):
        DEFAULT.socket_factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80)))
    sock: Any = DEFAULT.socket_factory(
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))
    )
    sock.close()
