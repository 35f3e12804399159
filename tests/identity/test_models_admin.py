"""Issuers, grants, server identities and user secrets: validation, and the admin's pages."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from servers import services
from servers.identity import services as identity
from servers.identity.models import AccessGrant, ServerIdentity, TrustedIssuer, UserSecret
from servers.models import Pool, Server

pytestmark = pytest.mark.django_db


@pytest.fixture
def server() -> Server:
    pool = services.save(Pool(name="CRM", slug="crm"))
    return services.save(
        Server(pool=pool, name="crm-1", transport="streamable_http", url="http://127.0.0.1:9/mcp")
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"algorithms": ["HS256"]}, "algorithms"),
        ({"algorithms": ["none"]}, "algorithms"),
        ({"algorithms": []}, "algorithms"),
        ({"issuer": "http://login.example.com"}, "issuer"),
        ({"jwks_uri": "ftp://login.example.com/keys"}, "jwks_uri"),
    ],
)
def test_issuer_unsafe_settings_are_refused_and_nothing_saved(
    fields: dict[str, Any], field: str
) -> None:
    issuer = TrustedIssuer(**{"name": "corp", "issuer": "https://login.example.com", **fields})
    with pytest.raises(ValidationError) as raised:
        identity.save(issuer)
    assert field in raised.value.message_dict
    assert not TrustedIssuer.objects.exists()
    assert services.config_version() == 0


def test_grant_belongs_to_a_key_or_an_issuer_never_both_nor_neither() -> None:
    with pytest.raises(ValidationError, match="not both"):
        identity.save(AccessGrant(claim="scope", value="x"))
    issuer = identity.save(TrustedIssuer(name="corp", issuer="https://login.example.com"))
    with pytest.raises(ValidationError) as raised:
        identity.save(AccessGrant(issuer=issuer, claim="scope", value="", deny_tools="x"))
    assert {"value", "deny_tools"} <= set(raised.value.message_dict)


def test_server_identity_cannot_set_authorization(server: Server) -> None:
    with pytest.raises(ValidationError, match="cannot be set"):
        identity.save(ServerIdentity(server=server, identity_header="Authorization"))


def test_admin_pages_list_and_edit_identity_objects(admin_client: Client, server: Server) -> None:
    issuer = identity.save(TrustedIssuer(name="corp", issuer="https://login.example.com"))
    grant = identity.save(AccessGrant(issuer=issuer, claim="groups", value="sre"))
    for model, obj in (("trustedissuer", issuer), ("accessgrant", grant)):
        assert admin_client.get(reverse(f"admin:identity_{model}_changelist")).status_code == 200
        page = admin_client.get(reverse(f"admin:identity_{model}_change", args=[obj.pk]))
        assert page.status_code == 200


def test_admin_user_secret_is_stored_encrypted_and_shown_masked(
    admin_client: Client, server: Server, settings: Any
) -> None:
    settings.MCPPOOL_SECRETS_KEYS = [Fernet.generate_key().decode()]
    version = services.config_version()
    response = admin_client.post(
        reverse("admin:identity_usersecret_add"),
        {"server": server.pk, "issuer": "", "subject": "alice", "value": "alice-own-token-123"},
    )
    assert response.status_code == 302, response.content
    row = UserSecret.objects.get(subject="alice")
    assert "alice-own-token-123" not in row.secret
    assert services.config_version() == version + 1
    listing = admin_client.get(reverse("admin:identity_usersecret_changelist")).content.decode()
    assert "alice-own-token-123" not in listing
    assert "••••23" in listing


def test_rotate_secrets_reencrypts_user_secrets_so_the_old_key_can_go(
    server: Server, settings: Any
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.MCPPOOL_SECRETS_KEYS = [old]
    identity.set_user_secret(server, "alice", "alice-own-token")
    settings.MCPPOOL_SECRETS_KEYS = [new, old]
    services.rotate_secrets()
    settings.MCPPOOL_SECRETS_KEYS = [new]
    row = UserSecret.objects.get(subject="alice")
    assert Fernet(new.encode()).decrypt(row.secret.encode()) == b"alice-own-token"
