"""The operator's admin, driven through real requests as a logged-in operator."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from servers import configfile, services
from servers.models import AffinityRule, ApiKey, Pool, Server
from tests.helpers.keys import authenticated

pytestmark = pytest.mark.django_db

SECRET = re.compile(r"mcp_[0-9a-f]{8}_[A-Za-z0-9_-]+")


@pytest.fixture
def api_key(pool: Pool) -> ApiKey:
    key, _secret = services.create_api_key("billing", pools=[pool])
    return key


def _url(model: str, view: str, *args: Any) -> str:
    return reverse(f"admin:servers_{model}_{view}", args=args)


def _pool_form(**fields: Any) -> dict[str, Any]:
    """What the pool add form posts: every knob at its default, no inline rows."""
    data: dict[str, Any] = {name: getattr(Pool(), name) for name in configfile.POOL_FIELDS}
    data.update(name="Search", slug="search")
    for prefix in ("servers", "affinity_rules"):
        data.update(
            {
                f"{prefix}-TOTAL_FORMS": "0",
                f"{prefix}-INITIAL_FORMS": "0",
                f"{prefix}-MIN_NUM_FORMS": "0",
                f"{prefix}-MAX_NUM_FORMS": "1000",
            }
        )
    data.update(fields)
    return data


def _inline_servers(*servers: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"servers-TOTAL_FORMS": str(len(servers))}
    for index, server in enumerate(servers):
        row = {"weight": "1", "priority": "0", "state": "enabled", "url": "", "command": ""}
        row.update(server)
        data.update({f"servers-{index}-{name}": value for name, value in row.items()})
    return data


def _messages(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_admin_pages_render_for_staff(
    admin_client: Client,
    http_server: Server,
    stdio_server: Server,
    rule: AffinityRule,
    api_key: ApiKey,
) -> None:
    pages = [
        _url("pool", "changelist"),
        _url("pool", "add"),
        _url("pool", "change", http_server.pool.pk),
        _url("server", "changelist"),
        _url("server", "add"),
        _url("server", "change", http_server.pk),
        _url("server", "change", stdio_server.pk),
        _url("affinityrule", "changelist"),
        _url("affinityrule", "add"),
        _url("affinityrule", "change", rule.pk),
        _url("apikey", "changelist"),
        _url("apikey", "add"),
        _url("apikey", "change", api_key.pk),
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page


def test_admin_key_list_says_plainly_what_each_admin_key_may_configure(
    admin_client: Client, pool: Pool
) -> None:
    services.create_api_key("root-admin", all_pools=True, is_admin=True)
    services.create_api_key("team-admin", pools=[pool], is_admin=True)
    services.create_api_key("plain-app", pools=[pool])

    page = admin_client.get(_url("apikey", "changelist")).content.decode()

    rows = {
        name: row
        for row in page.split("<tr")
        for name in ("root-admin", "team-admin", "plain-app")
        if f">{name}<" in row
    }
    assert "may create pools" in rows["root-admin"]
    assert "its pools only" in rows["team-admin"]
    assert "may create pools" not in rows["team-admin"]
    assert "its pools only" not in rows["plain-app"]
    assert "may create pools" not in rows["plain-app"]


def test_admin_anonymous_is_sent_to_login(client: Client, pool: Pool) -> None:
    response = client.get(_url("pool", "changelist"))
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_admin_non_staff_user_is_refused(client: Client, pool: Pool) -> None:
    user = User.objects.create_user("app-dev", password="not-staff-pw")
    client.force_login(user)
    response = client.get(_url("pool", "change", pool.pk))
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_pool_changelist_shows_servers_up_of_total(
    admin_client: Client, http_server: Server, stdio_server: Server
) -> None:
    Server.objects.filter(pk=http_server.pk).update(health="up")
    response = admin_client.get(_url("pool", "changelist"))
    assert "1/2" in response.content.decode()


def test_server_changelist_filters_and_searches(
    admin_client: Client, http_server: Server, stdio_server: Server
) -> None:
    Server.objects.filter(pk=http_server.pk).update(health="down", last_error="connect refused")
    response = admin_client.get(_url("server", "changelist"), {"health": "down", "q": "127.0.0.1"})
    page = response.content.decode()
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [http_server]
    assert "connect refused" in page
    assert '<span style="background:#c62828' in page  # the health badge, red for down


@pytest.mark.parametrize(
    ("action", "state"), [("drain", "draining"), ("disable", "disabled"), ("enable", "enabled")]
)
def test_server_state_action_changes_state_and_bumps_version(
    admin_client: Client, http_server: Server, stdio_server: Server, action: str, state: str
) -> None:
    # given one server already in the target state
    Server.objects.filter(pk=stdio_server.pk).update(state=state)
    before = services.config_version()
    # when both are selected for the action
    response = admin_client.post(
        _url("server", "changelist"),
        {"action": action, "_selected_action": [http_server.pk, stdio_server.pk]},
        follow=True,
    )
    # then both are in that state, one change was counted, and the version moved once
    assert set(Server.objects.values_list("state", flat=True)) == {state}
    changed = 0 if state == "enabled" else 1
    assert services.config_version() == before + 1
    assert any(message.startswith(f"{changed} server") for message in _messages(response))


def test_api_key_add_shows_secret_once_and_stores_only_its_hash(
    admin_client: Client, pool: Pool
) -> None:
    # when an operator creates a key in the add form
    response = admin_client.post(
        _url("apikey", "add"),
        {"name": "search-app", "pools": [pool.pk], "rate_limit_per_minute": "60"},
    )
    # then this response carries the secret, in its messages
    assert response.status_code == 200
    secrets = [m for message in _messages(response) for m in SECRET.findall(message)]
    assert len(secrets) == 1
    secret = secrets[0]
    assert secret in response.content.decode()
    key = ApiKey.objects.get(name="search-app")
    found = authenticated(secret)  # the secret shown is the key's: it authenticates
    assert found is not None
    assert found.id == key.pk
    assert list(key.pools.all()) == [pool]
    assert key.rate_limit_per_minute == 60
    # and nothing keeps it for later: no cookie, no later page
    assert secret not in str(response.cookies)
    for page in (_url("apikey", "changelist"), _url("apikey", "change", key.pk)):
        later = admin_client.get(page)
        assert secret not in later.content.decode()
        assert not any(SECRET.search(message) for message in _messages(later))


def test_api_key_hash_never_appears_in_admin_pages(admin_client: Client, api_key: ApiKey) -> None:
    pages = [
        _url("apikey", "changelist"),
        _url("apikey", "change", api_key.pk),
        _url("apikey", "history", api_key.pk),
        _url("apikey", "delete", api_key.pk),
    ]
    for page in pages:
        assert api_key.hashed_secret not in admin_client.get(page).content.decode(), page


def test_api_key_change_keeps_hash_and_bumps_version_once(
    admin_client: Client, api_key: ApiKey, pool: Pool
) -> None:
    other = services.save(Pool(name="Other", slug="other"))
    before = services.config_version()
    response = admin_client.post(
        _url("apikey", "change", api_key.pk),
        {"name": "billing", "pools": [pool.pk, other.pk], "rate_limit_per_minute": "5"},
    )
    assert response.status_code == 302
    stored = ApiKey.objects.get(pk=api_key.pk)
    assert stored.hashed_secret == api_key.hashed_secret
    assert stored.prefix == api_key.prefix
    assert set(stored.pools.all()) == {pool, other}
    assert stored.rate_limit_per_minute == 5
    assert services.config_version() == before + 1


def test_api_key_revoke_action_makes_key_inactive(admin_client: Client, api_key: ApiKey) -> None:
    response = admin_client.post(
        _url("apikey", "changelist"),
        {"action": "revoke", "_selected_action": [api_key.pk]},
        follow=True,
    )
    assert not ApiKey.objects.get(pk=api_key.pk).is_active
    assert "1 key revoked." in _messages(response)


def test_pool_add_with_inline_servers_bumps_version_once(admin_client: Client, db: Any) -> None:
    before = services.config_version()
    data = _pool_form(
        **_inline_servers(
            {"name": "s1", "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"},
            {"name": "s2", "transport": "stdio", "command": "python"},
        )
    )
    response = admin_client.post(_url("pool", "add"), data)
    assert response.status_code == 302, response.context and response.context["errors"]
    pool = Pool.objects.get(slug="search")
    assert sorted(pool.servers.values_list("name", flat=True)) == ["s1", "s2"]
    assert services.config_version() == before + 1


def test_pool_with_invalid_inline_server_shows_error_and_saves_nothing(
    admin_client: Client, db: Any
) -> None:
    before = services.config_version()
    data = _pool_form(
        **_inline_servers(
            {"name": "ok", "transport": "stdio", "command": "python"},
            {"name": "heavy", "transport": "stdio", "command": "python", "weight": "5000"},
        )
    )
    response = admin_client.post(_url("pool", "add"), data)
    assert response.status_code == 200
    assert "Ensure this value is less than or equal to 1000." in response.content.decode()
    assert not Pool.objects.exists()
    assert not Server.objects.exists()
    assert services.config_version() == before


def test_pool_inline_stdio_server_with_url_shows_model_error(
    admin_client: Client, pool: Pool
) -> None:
    data = _pool_form(
        name=pool.name,
        slug=pool.slug,
        **_inline_servers(
            {"name": "x", "transport": "stdio", "command": "python", "url": "http://127.0.0.1:9/"}
        ),
    )
    response = admin_client.post(_url("pool", "change", pool.pk), data)
    assert response.status_code == 200
    assert "A stdio server takes no URL." in response.content.decode()
    assert not Server.objects.exists()


def test_server_change_with_bad_value_shows_form_error(
    admin_client: Client, http_server: Server
) -> None:
    before = services.config_version()
    response = admin_client.post(
        _url("server", "change", http_server.pk),
        {
            "pool": http_server.pool.pk,
            "name": "a",
            "transport": "streamable_http",
            "url": "http://127.0.0.1:9/mcp",
            "headers": "{}",
            "args": "[]",
            "env": "{}",
            "weight": "1",
            "priority": "12",
            "state": "enabled",
            "max_in_flight": "0",
            "era": "auto",
        },
    )
    assert response.status_code == 200
    assert "Ensure this value is less than or equal to 9." in response.content.decode()
    assert services.config_version() == before


def test_pool_delete_through_admin_removes_servers_and_bumps_version(
    admin_client: Client, http_server: Server
) -> None:
    before = services.config_version()
    response = admin_client.post(_url("pool", "delete", http_server.pool.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not Pool.objects.exists()
    assert not Server.objects.exists()
    assert services.config_version() == before + 1


def test_server_bulk_delete_is_one_config_change(
    admin_client: Client, http_server: Server, stdio_server: Server
) -> None:
    before = services.config_version()
    admin_client.post(
        _url("server", "changelist"),
        {
            "action": "delete_selected",
            "_selected_action": [http_server.pk, stdio_server.pk],
            "post": "yes",
        },
    )
    assert not Server.objects.exists()
    assert services.config_version() == before + 1


def test_rule_inline_offers_only_this_pools_servers(
    admin_client: Client, http_server: Server
) -> None:
    other = services.save(Pool(name="Other", slug="other"))
    services.save(Server(pool=other, name="elsewhere", transport="stdio", command="python"))
    response = admin_client.get(_url("pool", "change", http_server.pool.pk))
    formset = next(
        f for f in response.context["inline_admin_formsets"] if f.formset.model is AffinityRule
    )
    choices = formset.formset.empty_form.fields["pin_server"].queryset
    assert list(choices) == [http_server]
