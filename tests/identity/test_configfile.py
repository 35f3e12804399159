"""The config file's `identity:` section: issuers with token grants, server identity forwarding."""

from __future__ import annotations

import pytest

from servers import configfile, services
from servers.identity.models import AccessGrant, ServerIdentity, TrustedIssuer

pytestmark = pytest.mark.django_db

FILE = """
pools:
  - slug: crm
    name: CRM
    servers:
      - {name: crm-1, transport: streamable_http, url: "http://127.0.0.1:9/mcp"}
identity:
  issuers:
    - name: corp
      issuer: https://login.example.com/
      algorithms: [RS256]
      grants:
        - {claim: scope, value: "mcp:tools", pool: crm, deny_tools: ["delete_*"]}
        - {claim: groups, value: sre, tool_rate_limits: {restart: 5}}
  servers:
    - {pool: crm, server: crm-1, identity_header: X-User, identity_claim: email}
"""


def test_identity_section_creates_issuer_grants_and_forwarding_in_one_change() -> None:
    before = services.config_version()
    configfile.apply_text(FILE, "corp.yaml")
    issuer = TrustedIssuer.objects.get(name="corp")
    grants = list(AccessGrant.objects.filter(issuer=issuer).order_by("id"))
    assert [(g.claim, g.value, g.pool.slug if g.pool else None) for g in grants] == [
        ("scope", "mcp:tools", "crm"),
        ("groups", "sre", None),
    ]
    assert grants[0].deny_tools == ["delete_*"]
    assert grants[1].tool_rate_limits == {"restart": 5}
    assert ServerIdentity.objects.get(server__name="crm-1").identity_claim == "email"
    assert services.config_version() == before + 1


def test_identity_section_reapplied_or_exported_changes_nothing() -> None:
    configfile.apply_text(FILE, "corp.yaml")
    version = services.config_version()
    assert not configfile.apply_text(FILE, "corp.yaml")  # an empty plan
    exported = configfile.export()
    assert not configfile.apply_text(exported, "export.yaml")
    assert services.config_version() == version


def test_identity_section_errors_name_their_lines_and_write_nothing() -> None:
    symmetric = FILE.replace("[RS256]", "[HS256]")
    with pytest.raises(configfile.ConfigFileError, match=r"bad\.yaml:11: .*algorithms"):
        configfile.apply_text(symmetric, "bad.yaml")
    unknown_pool = FILE.replace("pool: crm, deny", "pool: nope, deny")
    with pytest.raises(configfile.ConfigFileError, match=r"bad\.yaml:13: .*no pool 'nope'"):
        configfile.apply_text(unknown_pool, "bad.yaml")
    assert not TrustedIssuer.objects.exists()
    assert services.config_version() == 0
