"""Service functions: the version bump and the config.changed event, on commit only."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.exceptions import ValidationError
from django.db import transaction

from servers import events, services
from servers.choices import ServerState
from servers.models import ApiKey, Pool, Server
from tests.helpers.keys import a_wrong_secret, authenticated


class _Listener:
    """A real member of the control group on the configured channel layer."""

    def __init__(self) -> None:
        layer = get_channel_layer()
        assert layer is not None
        self.layer = layer
        self.channel = async_to_sync(self.layer.new_channel)()
        async_to_sync(self.layer.group_add)(events.CONTROL_GROUP, self.channel)

    def next(self, timeout: float = 2.0) -> dict[str, Any] | None:
        import asyncio

        async def receive() -> dict[str, Any] | None:
            try:
                return await asyncio.wait_for(self.layer.receive(self.channel), timeout)
            except TimeoutError:
                return None

        return async_to_sync(receive)()

    def close(self) -> None:
        async_to_sync(self.layer.group_discard)(events.CONTROL_GROUP, self.channel)


@pytest.fixture
def listener(redis_url: str, settings: Any) -> Any:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_url], "prefix": "mcppool-test"},
        }
    }
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    member = _Listener()
    yield member
    member.close()
    channel_layers.backends.clear()


@pytest.mark.django_db(transaction=True)
def test_save_publishes_config_changed_after_commit(listener: Any) -> None:
    # given a listener in the control group
    # when a pool is saved
    services.save(Pool(name="P", slug="p"))
    # then the event arrives, carrying the new version
    event = listener.next()
    assert event is not None
    assert event["type"] == "config.changed"
    assert event["version"] == services.config_version() >= 1


@pytest.mark.django_db(transaction=True)
def test_save_rolled_back_publishes_nothing(listener: Any) -> None:
    before = services.config_version()

    def doomed() -> None:
        with transaction.atomic():
            services.save(Pool(name="P", slug="p"))
            raise RuntimeError("the outer transaction fails")

    with pytest.raises(RuntimeError):
        doomed()
    assert listener.next(timeout=0.5) is None
    assert services.config_version() == before
    assert not Pool.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_invalid_save_publishes_nothing_and_keeps_version(listener: Any) -> None:
    before = services.config_version()
    with pytest.raises(ValidationError):
        services.save(Pool(name="P", slug="bad slug"))
    assert listener.next(timeout=0.5) is None
    assert services.config_version() == before


@pytest.mark.django_db
def test_set_server_state_drains_and_bumps_version(http_server: Server) -> None:
    before = services.config_version()
    changed = services.set_server_state([http_server], ServerState.DRAINING)
    http_server.refresh_from_db()
    assert changed == 1
    assert http_server.state == "draining"
    assert services.config_version() == before + 1
    assert services.set_server_state([http_server], ServerState.DRAINING) == 0


@pytest.mark.django_db
def test_create_api_key_stores_only_hash(pool: Pool) -> None:
    key, secret = services.create_api_key("app", pools=[pool], rate_limit_per_minute=60)
    stored = ApiKey.objects.get(pk=key.pk)
    assert secret not in (stored.hashed_secret, stored.prefix)
    found = authenticated(secret)
    assert found is not None
    assert found.id == key.pk
    assert authenticated(a_wrong_secret(secret)) is None
    assert list(stored.pools.all()) == [pool]
    assert stored.is_active


@pytest.mark.django_db
def test_revoke_api_key_makes_it_inactive(pool: Pool) -> None:
    key, _ = services.create_api_key("app", pools=[pool])
    services.revoke_api_key(key)
    assert not ApiKey.objects.get(pk=key.pk).is_active


@pytest.mark.django_db
def test_api_key_of_a_foreign_shape_does_not_authenticate(pool: Pool) -> None:
    _, secret = services.create_api_key("app", pools=[pool])
    prefix = secret.split("_")[1]
    for presented in ("Bearer nope", "mcp_short_x", f"mcp_{prefix}_", f"key_{prefix}_x", prefix):
        assert authenticated(presented) is None, presented
