"""The `identity:` section of a config file: trusted issuers with their token grants, and which
servers learn who calls. Planned with the pools (same `Change`s, same transaction, same version
bump); `servers.configfile` calls `plan` and `export`.

    identity:
      issuers:
        - name: corp
          issuer: https://login.example.com/
          algorithms: [RS256]
          grants:
            - {claim: scope, value: "mcp:tools", pool: crm, deny_tools: ["delete_*"]}
            - {claim: groups, value: sre, allow_tools: ["*"], tool_rate_limits: {restart: 5}}
      servers:
        - {pool: crm, server: crm-1, identity_header: X-User, identity_claim: email}

Issuers match by `name`; an issuer's grants are the file's list (replaced as a whole when it
differs); server entries match by pool and server name. API-key grants and per-user secrets are
not in the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError

from servers.identity.models import AccessGrant, ServerIdentity, TrustedIssuer
from servers.models import Pool, Server

if TYPE_CHECKING:
    from servers.configfile import Change, Document, KeyPath, Problem

ISSUER_FIELDS = (
    "name",
    "issuer",
    "jwks_uri",
    "algorithms",
    "subject_claim",
    "leeway_seconds",
    "enabled",
)
GRANT_FIELDS = ("claim", "value", "pool", "allow_tools", "deny_tools", "tool_rate_limits")
SERVER_FIELDS = ("pool", "server", "identity_header", "identity_claim", "secret_header")
SECTION_KEYS = ("issuers", "servers")


def _grant_key(grant: AccessGrant) -> tuple[Any, ...]:
    return (
        grant.claim,
        grant.value,
        grant.pool.slug if grant.pool is not None else None,
        grant.allow_tools,
        grant.deny_tools,
        grant.tool_rate_limits,
    )


class IdentityPlanner:
    def __init__(
        self,
        doc: Document,
        problems: list[Problem],
        pools: Mapping[str, Pool],
        servers: Mapping[tuple[str, str], Server],
        prune: bool,
    ) -> None:
        self.doc = doc
        self.problems = problems
        self.pools = pools
        self.servers = servers
        self.prune = prune
        self.saves: list[Change] = []
        self.deletes: list[Change] = []

    def run(self) -> tuple[list[Change], list[Change]]:
        section = self.doc.data.get("identity") if isinstance(self.doc.data, dict) else None
        if section is None:
            section = {}
        if not isinstance(section, dict):
            self._problem(("identity",), "must be a mapping with issuers and servers lists")
            return [], []
        for key in section:
            if key not in SECTION_KEYS:
                self._problem(
                    ("identity", key), f"unknown key (expected {', '.join(SECTION_KEYS)})"
                )
        self._issuers(self._list(section, "issuers"))
        self._identities(self._list(section, "servers"))
        return self.saves, self.deletes

    def _list(self, section: dict[str, Any], key: str) -> list[tuple[KeyPath, Any]]:
        items = section.get(key, [])
        if not isinstance(items, list):
            self._problem(("identity", key), "must be a list")
            return []
        return [(("identity", key, i), item) for i, item in enumerate(items)]

    def _problem(self, path: KeyPath, message: str) -> None:
        self.problems.append(self.doc.problem(path, message))

    def _fields(self, path: KeyPath, item: Any, allowed: tuple[str, ...]) -> dict[str, Any] | None:
        if not isinstance(item, dict):
            self._problem(path, "must be a mapping")
            return None
        unknown = [k for k in item if k not in allowed]
        for key in unknown:
            self._problem((*path, key), f"unknown key (one of {', '.join(allowed)})")
        return None if unknown else dict(item)

    def _check(self, path: KeyPath, obj: Any, exclude: list[str]) -> bool:
        try:
            obj.full_clean(exclude=exclude, validate_unique=False)
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                where = path if name == "__all__" else (*path, name)
                self._problem(where, " ".join(messages))
            return False
        return True

    def _record(self, path: KeyPath, obj: Any, label: str, fields: list[str]) -> None:
        from servers.configfile import Change

        fields_changed = [(f, None, getattr(obj, f)) for f in fields]
        if obj.pk is None:
            self.saves.append(Change("create", obj, label, fields_changed, path))
        else:
            self.saves.append(Change("update", obj, label, fields_changed, path))

    def _issuers(self, items: list[tuple[KeyPath, Any]]) -> None:
        from servers.configfile import Change

        existing = {i.name: i for i in TrustedIssuer.objects.prefetch_related("grants__pool")}
        seen: set[str] = set()
        for path, item in items:
            values = self._fields(path, item, (*ISSUER_FIELDS, "grants"))
            if values is None:
                continue
            name = values.get("name")
            if not isinstance(name, str) or not name or name in seen:
                self._problem(path, "needs a unique name (issuers match by name)")
                continue
            seen.add(name)
            grants = values.pop("grants", [])
            issuer = existing.get(name) or TrustedIssuer()
            changed = [f for f in values if getattr(issuer, f, None) != values[f]]
            for field, value in values.items():
                setattr(issuer, field, value)
            if not self._check(path, issuer, []):
                continue
            if changed or issuer.pk is None:
                self._record(path, issuer, f"issuer {name}", changed)
            self._grants((*path, "grants"), grants, issuer)
        for name, issuer in existing.items():
            if self.prune and name not in seen:
                self.deletes.append(Change("delete", issuer, f"issuer {name} (and its grants)"))

    def _grants(self, path: KeyPath, items: Any, issuer: TrustedIssuer) -> None:
        from servers.configfile import Change

        if not isinstance(items, list):
            self._problem(path, "must be a list of grants")
            return
        planned: list[AccessGrant] = []
        for index, item in enumerate(items):
            values = self._fields((*path, index), item, GRANT_FIELDS)
            if values is None:
                continue
            slug = values.pop("pool", None)
            pool = None
            if slug is not None:
                pool = self.pools.get(slug) if isinstance(slug, str) else None
                if pool is None:
                    self._problem((*path, index, "pool"), f"no pool {slug!r} in the file or stored")
                    continue
            grant = AccessGrant(issuer=issuer, pool=pool, **values)
            if self._check((*path, index), grant, ["issuer", "pool"]):
                planned.append(grant)
        current = list(issuer.grants.all()) if issuer.pk is not None else []
        if [_grant_key(g) for g in planned] == [_grant_key(g) for g in current]:
            return
        for grant in current:
            self.deletes.append(Change("delete", grant, f"grant {grant}"))
        for index, grant in enumerate(planned):
            self._record((*path, index), grant, f"grant of {issuer.name}", list(GRANT_FIELDS))

    def _identities(self, items: list[tuple[KeyPath, Any]]) -> None:
        from servers.configfile import Change

        existing = {
            (i.server.pool.slug, i.server.name): i
            for i in ServerIdentity.objects.select_related("server__pool")
        }
        seen: set[tuple[str, str]] = set()
        for path, item in items:
            values = self._fields(path, item, SERVER_FIELDS)
            if values is None:
                continue
            where = (values.pop("pool", None), values.pop("server", None))
            server = self.servers.get(where)
            if server is None or where in seen:
                self._problem(
                    path, f"no server {where[1]!r} in pool {where[0]!r} (or listed twice)"
                )
                continue
            seen.add(where)
            row = existing.get(where) or ServerIdentity(server=server)
            changed = [f for f in values if getattr(row, f) != values[f]]
            for field, value in values.items():
                setattr(row, field, value)
            if self._check(path, row, ["server"]) and (changed or row.pk is None):
                self._record(path, row, f"identity of server {where[0]}/{where[1]}", changed)
        for key, row in existing.items():
            if self.prune and key not in seen:
                self.deletes.append(Change("delete", row, f"identity of server {key[0]}/{key[1]}"))


def export_data() -> dict[str, Any]:
    issuers = [
        {
            **{f: getattr(issuer, f) for f in ISSUER_FIELDS},
            "grants": [
                dict(zip(GRANT_FIELDS, _grant_key(grant), strict=True))
                for grant in issuer.grants.select_related("pool").order_by("id")
            ],
        }
        for issuer in TrustedIssuer.objects.order_by("name")
    ]
    servers = [
        {
            "pool": row.server.pool.slug,
            "server": row.server.name,
            **{f: getattr(row, f) for f in SERVER_FIELDS[2:]},
        }
        for row in ServerIdentity.objects.select_related("server__pool").order_by("id")
    ]
    return {"issuers": issuers, "servers": servers} if issuers or servers else {}
