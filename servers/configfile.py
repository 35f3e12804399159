"""Config as code: the operator's pools, servers and affinity rules as one YAML file.

`load` parses a file and remembers the line of every key; `plan` checks the whole file against the
model (every object's `full_clean()`) and computes the changes without writing anything; `apply`
writes a plan in one config change (one transaction, one version bump, one event); `export` writes
the current config in the same format. API keys are never in the file: they carry secrets.
Secret header and environment values (`secret_headers`, `secret_env`) are: plaintext in the file
(encrypted on save), masked in an export unless asked for, and a masked value keeps what is stored.

Objects are matched by natural keys: a pool by `slug`, a server by `name` within its pool, an
affinity rule by `order` within its pool, and a rule pins a server by the server's name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from django.core.exceptions import NON_FIELD_ERRORS, ImproperlyConfigured, ValidationError
from django.db import models, transaction
from django.db.models import Prefetch

from servers import secrets, services
from servers.choices import AffinityAction
from servers.identity.configfile import IdentityPlanner
from servers.identity.configfile import export_data as identity_export
from servers.identity.models import FileObject
from servers.models import AffinityRule, Pool, Server
from servers.services import POOL_FIELDS as POOL_FIELDS
from servers.services import RULE_FIELDS as RULE_FIELDS
from servers.services import SERVER_FIELDS as SERVER_FIELDS

# Secret maps (name → value; stored encrypted). Not in SERVER_FIELDS: they never travel as plain
# fields (the REST API, change descriptions); the file names them next to their plain maps.
SECRET_FIELDS = ("secret_headers", "secret_env")
SERVER_FILE_FIELDS = tuple(
    name
    for plain in SERVER_FIELDS
    for name in ((plain, f"secret_{plain}") if f"secret_{plain}" in SECRET_FIELDS else (plain,))
)
POOL_CHILDREN = ("servers", "affinity_rules")

# Aliases can make a small YAML file describe a deep (even cyclic) tree; no real config nests
# deeper than pools → servers → env.
_MAX_DEPTH = 12

KeyPath = tuple[str | int, ...]
ConfigObject = Pool | Server | AffinityRule | FileObject


@dataclass(frozen=True)
class Problem:
    line: int
    where: str  # e.g. "pools[0].servers[1].weight"
    message: str


class ConfigFileError(Exception):
    """A file that cannot be applied; every problem found, first line first."""

    def __init__(self, source: str, problems: Iterable[Problem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: p.line)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(
            f"{self.source}:{p.line}: {p.where}: {p.message}"
            if p.where
            else f"{self.source}:{p.line}: {p.message}"
            for p in self.problems
        )


def where(path: KeyPath) -> str:
    """`("pools", 0, "servers", 1, "weight")` → `pools[0].servers[1].weight`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@dataclass(frozen=True)
class Document:
    """A parsed file: plain data plus the line of every mapping key and list item."""

    source: str
    data: Any
    lines: Mapping[KeyPath, int]

    def line(self, path: KeyPath) -> int:
        # A field the file does not name (a default the model refused) is reported on the line
        # of the nearest thing the file does name.
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def problem(self, path: KeyPath, message: str) -> Problem:
        return Problem(self.line(path), where(path), message)


def load(text: str, source: str = "<config>") -> Document:
    """Parse YAML (safe subset), keeping line numbers. Raises ConfigFileError on bad syntax."""
    loader = yaml.SafeLoader(text)
    lines: dict[KeyPath, int] = {}
    try:
        node = loader.get_single_node()
        data = None if node is None else _construct(loader, node, (), lines, source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigFileError(source, [Problem(line, "", f"invalid YAML: {exc.problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigFileError(source, [Problem(1, "", f"invalid YAML: {exc}")]) from exc
    finally:
        loader.dispose()
    return Document(source, data, lines)


def _construct(
    loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], source: str
) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if len(path) > _MAX_DEPTH:
        raise ConfigFileError(source, [Problem(lines[path], where(path), "nested too deeply")])
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # YAML merge keys (<<: *defaults)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            key_line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise ConfigFileError(
                    source, [Problem(key_line, where(path), f"key {key!r} is not a string")]
                )
            key_path = (*path, key)
            if key in result:
                # PyYAML keeps the last of two equal keys silently; a config file must not.
                raise ConfigFileError(source, [Problem(key_line, where(key_path), "duplicate key")])
            lines[key_path] = key_line
            result[key] = _construct(loader, value_node, key_path, lines, source)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(loader, item, (*path, index), lines, source)
            for index, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


# --- plan: validate and diff, no writes -------------------------------------------------------


@dataclass
class Change:
    action: Literal["create", "update", "delete"]
    obj: ConfigObject
    label: str  # "pool time", "server time/a", "rule time#0"
    fields: list[tuple[str, Any, Any]] = field(default_factory=list)  # (name, old, new)
    path: KeyPath = ()  # where the file describes it (nothing for a delete)

    def describe(self) -> str:
        if self.action == "delete":
            return f"- {self.label}"
        if self.action == "create":
            values = ", ".join(f"{name}={new!r}" for name, _old, new in self.fields)
            return f"+ {self.label}" + (f": {values}" if values else "")
        diffs = ", ".join(f"{name} {old!r} → {new!r}" for name, old, new in self.fields)
        return f"~ {self.label}: {diffs}"


@dataclass
class Plan:
    document: Document
    changes: list[Change]

    def __bool__(self) -> bool:
        return bool(self.changes)

    def describe(self) -> list[str]:
        return [change.describe() for change in self.changes]


def plan(document: Document, *, prune: bool = False) -> Plan:
    """Validate the whole file against the model and the database; raise ConfigFileError listing
    every problem, or return the changes that would make the database match the file."""
    return _Planner(document, prune).run()


class _Planner:
    def __init__(self, document: Document, prune: bool) -> None:
        self.doc = document
        self.prune = prune
        self.problems: list[Problem] = []
        self.saves: list[Change] = []
        self.deletes: list[Change] = []

    def run(self) -> Plan:
        pools = self._top_level()
        existing = {pool.slug: pool for pool in _current_pools()}
        named: dict[str, KeyPath] = {}
        names: dict[str, KeyPath] = {}
        for index, item in enumerate(pools):
            self._pool(("pools", index), item, existing, named, names)
        if self.prune:
            for slug, pool in existing.items():
                if slug not in named:
                    servers, rules = len(pool.servers.all()), len(pool.affinity_rules.all())
                    label = f"pool {slug} (with {servers} servers, {rules} rules)"
                    self.deletes.append(Change("delete", pool, label))
        self._identity(existing)
        if self.problems:
            raise ConfigFileError(self.doc.source, self.problems)
        # Rules before servers before pools, and all after the saves: a kept rule is re-pointed
        # before the server it used to pin is deleted, so the cascade never takes it along.
        rank = {AffinityRule: 0, Server: 1, Pool: 2}
        self.deletes.sort(key=lambda change: rank.get(type(change.obj), -1))
        return Plan(self.doc, self.saves + self.deletes)

    def _identity(self, existing: dict[str, Pool]) -> None:
        """The `identity:` section (servers.identity.configfile), against the planned pools."""
        pools: dict[str, Pool] = dict(existing)
        servers = {(p.slug, s.name): s for p in existing.values() for s in p.servers.all()}
        for change in self.saves:
            if isinstance(change.obj, Pool):
                pools[change.obj.slug] = change.obj
            elif isinstance(change.obj, Server):
                servers[(change.obj.pool.slug, change.obj.name)] = change.obj
        saves, deletes = IdentityPlanner(self.doc, self.problems, pools, servers, self.prune).run()
        self.saves += saves
        self.deletes += deletes

    def _top_level(self) -> list[Any]:
        data = self.doc.data
        if not isinstance(data, dict) or "pools" not in data:
            self.problems.append(
                self.doc.problem((), "the file must be a mapping with a pools list")
            )
            raise ConfigFileError(self.doc.source, self.problems)
        for key in data:
            if key not in ("pools", "identity"):
                self.problems.append(self.doc.problem((key,), _unknown(key, ("pools", "identity"))))
        pools = data["pools"]
        if not isinstance(pools, list):
            self.problems.append(self.doc.problem(("pools",), "must be a list of pools"))
            raise ConfigFileError(self.doc.source, self.problems)
        return pools

    def _pool(
        self,
        path: KeyPath,
        item: Any,
        existing: dict[str, Pool],
        named: dict[str, KeyPath],
        names: dict[str, KeyPath],
    ) -> None:
        values, bad = self._read(path, item, Pool, POOL_FIELDS, POOL_CHILDREN)
        slug = values.get("slug")
        if not isinstance(slug, str) or not slug:
            if not bad & {"slug", "*"}:
                self.problems.append(self.doc.problem(path, "needs a slug (pools match by slug)"))
            return
        if slug in named:
            self._duplicate(path, "slug", slug, named[slug])
            return
        named[slug] = path
        name = values.get("name")
        if isinstance(name, str) and name in names:
            self._duplicate(path, "name", name, names[name])
        elif isinstance(name, str):
            names[name] = path
        current = existing.get(slug)
        pool = current if current is not None else Pool()
        changed = _assign(pool, values)
        self._validate(path, pool, bad, exclude=set())
        self._record(path, pool, current is None, changed, f"pool {slug}")
        servers = self._servers(path, item, pool, current)
        self._rules(path, item, pool, current, servers)

    def _servers(
        self, pool_path: KeyPath, item: Any, pool: Pool, current: Pool | None
    ) -> dict[str, Server]:
        """Plan the pool's servers; returns every server the pool will have, by name."""
        existing = {server.name: server for server in current.servers.all()} if current else {}
        named: dict[str, Server] = {}
        paths: dict[str, KeyPath] = {}
        for path, entry in self._children(pool_path, item, "servers"):
            values, bad = self._read(path, entry, Server, SERVER_FILE_FIELDS)
            name = values.get("name")
            if not isinstance(name, str) or not name:
                if not bad & {"name", "*"}:
                    self.problems.append(
                        self.doc.problem(path, "needs a name (servers match by name)")
                    )
                continue
            if name in named:
                self._duplicate(path, "name", name, paths[name])
                continue
            server = existing.get(name) or Server(pool=pool)
            self._seal_secrets(path, server, values, bad)
            stored_secrets = {name: getattr(server, name) for name in SECRET_FIELDS}
            changed = _assign(server, values)
            # A new target drops the stored secrets the file does not give again: say so in the
            # plan (a dry run shows it), not only when it is written.
            for name in secrets.drop_on_new_target(server):
                changed = [c for c in changed if c[0] != name]
                changed.append((name, stored_secrets[name], getattr(server, name)))
            _mask_changes(changed)
            # A server of a pool this file creates cannot be checked for a duplicate name in the
            # database yet; names within the file were just checked above.
            self._validate(path, server, bad, exclude={"pool"} if pool.pk is None else set())
            self._record(path, server, server.pk is None, changed, f"server {pool.slug}/{name}")
            named[name], paths[name] = server, path
        kept = dict(named)
        for name, server in existing.items():
            if name in named:
                continue
            if self.prune:
                self.deletes.append(Change("delete", server, f"server {pool.slug}/{name}"))
            else:
                kept[name] = server
        return kept

    def _rules(
        self,
        pool_path: KeyPath,
        item: Any,
        pool: Pool,
        current: Pool | None,
        servers: dict[str, Server],
    ) -> None:
        existing: dict[int, AffinityRule] = {}
        for rule in current.affinity_rules.all() if current else ():
            existing.setdefault(rule.order, rule)  # the oldest rule holds an order
        paths: dict[int, KeyPath] = {}
        for path, entry in self._children(pool_path, item, "affinity_rules"):
            values, bad = self._read(path, entry, AffinityRule, RULE_FIELDS)
            order = values.get("order")
            if not isinstance(order, int):
                if not bad & {"order", "*"}:
                    self.problems.append(
                        self.doc.problem(path, "needs an order (rules match by order)")
                    )
                continue
            if order in paths:
                self._duplicate(path, "order", order, paths[order])
                continue
            paths[order] = path
            rule = existing.get(order) or AffinityRule(pool=pool)
            pin_name = values.pop("pin_server", rule.pin_server.name if rule.pin_server else None)
            target = servers.get(pin_name) if pin_name is not None else None
            if pin_name is not None and target is None:
                bad.add("pin_server")
                gone = " (--prune deletes the servers the file does not name)" if self.prune else ""
                self.problems.append(
                    self.doc.problem(
                        (*path, "pin_server"),
                        f"no server named {pin_name!r} in pool {pool.slug!r}{gone}",
                    )
                )
            changed = _assign(rule, values)
            old_pin = rule.pin_server.name if rule.pin_server else None
            if old_pin != pin_name:
                changed.append(("pin_server", old_pin, pin_name))
            rule.pin_server = target
            self._validate_rule(path, rule, bad, exclude={"pool"} if pool.pk is None else set())
            self._record(path, rule, rule.pk is None, changed, f"rule {pool.slug}#{order}")
        if self.prune:
            for order, rule in existing.items():
                if order not in paths:
                    self.deletes.append(Change("delete", rule, f"rule {pool.slug}#{order}"))
            for rule in current.affinity_rules.all() if current else ():
                if existing.get(rule.order) is not rule:  # a second rule with a taken order
                    self.deletes.append(Change("delete", rule, f"rule {pool.slug}#{rule.order}"))

    def _seal_secrets(
        self, path: KeyPath, server: Server, values: dict[str, Any], bad: set[str]
    ) -> None:
        """Turn the file's secret values into the token maps to store, in place."""
        for name in SECRET_FIELDS:
            if name not in values:
                continue  # not named: the stored secrets stay as they are
            given = values.pop(name)
            problem = None
            if not all(isinstance(v, str) for v in given.values()):
                problem = "secret values must be strings (quote them)"
            else:
                try:
                    values[name] = secrets.seal(given, getattr(server, name))
                except (secrets.MaskedWithoutValue, ImproperlyConfigured) as exc:
                    problem = str(exc)
            if problem:
                bad.add(name)
                self.problems.append(self.doc.problem((*path, name), problem))

    def _children(self, pool_path: KeyPath, item: Any, key: str) -> list[tuple[KeyPath, Any]]:
        entries = item.get(key, []) if isinstance(item, dict) else []
        if not isinstance(entries, list):
            self.problems.append(self.doc.problem((*pool_path, key), "must be a list"))
            return []
        return [((*pool_path, key, index), entry) for index, entry in enumerate(entries)]

    def _read(
        self,
        path: KeyPath,
        item: Any,
        model: type[ConfigObject],
        allowed: tuple[str, ...],
        children: tuple[str, ...] = (),
    ) -> tuple[dict[str, Any], set[str]]:
        """The file's values for one object, typed; and the names of the fields that were bad."""
        values: dict[str, Any] = {}
        bad: set[str] = set()
        if not isinstance(item, dict):
            self.problems.append(self.doc.problem(path, "must be a mapping of fields"))
            return values, {"*"}
        for key, value in item.items():
            if key in children:
                continue
            if key not in allowed:
                self.problems.append(
                    self.doc.problem((*path, key), _unknown(key, allowed + children))
                )
                continue
            try:
                values[key] = _typed(model._meta.get_field(key), value)
            except ValueError as exc:
                bad.add(key)
                self.problems.append(self.doc.problem((*path, key), str(exc)))
        return values, bad

    def _validate(self, path: KeyPath, obj: ConfigObject, bad: set[str], exclude: set[str]) -> None:
        self._report(path, _errors(obj, exclude), bad)

    def _validate_rule(
        self, path: KeyPath, rule: AffinityRule, bad: set[str], exclude: set[str]
    ) -> None:
        errors = _errors(rule, exclude)
        target = rule.pin_server
        if target is not None and target.pk is None:
            # A pin to a server this same file creates: the model sees no server id yet. The name
            # was resolved within the pool above; `apply` validates again once the server exists.
            errors.pop("pin_server", None)
            if rule.action != AffinityAction.PIN:
                errors["pin_server"] = ["Only a pin rule names a server."]
        self._report(path, errors, bad)

    def _report(self, path: KeyPath, errors: dict[str, list[str]], bad: set[str]) -> None:
        if "*" in bad:
            return
        for name, messages in errors.items():
            if name in bad:  # already reported as a bad value in the file
                continue
            target = path if name == NON_FIELD_ERRORS else (*path, name)
            self.problems.append(self.doc.problem(target, " ".join(messages)))

    def _record(
        self,
        path: KeyPath,
        obj: ConfigObject,
        new: bool,
        changed: list[tuple[str, Any, Any]],
        label: str,
    ) -> None:
        if new:
            self.saves.append(Change("create", obj, label, changed, path))
        elif changed:
            self.saves.append(Change("update", obj, label, changed, path))

    def _duplicate(self, path: KeyPath, key: str, value: object, first: KeyPath) -> None:
        message = f"{value!r} is already used on line {self.doc.line((*first, key))}"
        self.problems.append(self.doc.problem((*path, key), message))


def _current_pools() -> list[Pool]:
    return list(
        Pool.objects.prefetch_related(
            "servers",
            Prefetch(
                "affinity_rules",
                queryset=AffinityRule.objects.select_related("pin_server").order_by("order", "id"),
            ),
        )
    )


def _unknown(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"


def _typed(model_field: Any, value: Any) -> Any:
    """The file's value as the model field's Python type; ValueError says what was expected.

    Checked here rather than left to `to_python()`, which would quietly turn `true` into 1 or a
    list into its repr for a text field.
    """
    if isinstance(model_field, models.ForeignKey):  # a rule's pin_server, by server name
        if value is None or (isinstance(value, str) and value):
            return value
        raise ValueError(f"must be a server name or null, not {_kind(value)}")
    if isinstance(model_field, models.BooleanField):
        if isinstance(value, bool):
            return value
        raise ValueError(f"must be true or false, not {_kind(value)}")
    if isinstance(model_field, models.IntegerField):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"must be a whole number, not {_kind(value)}")
    if isinstance(model_field, models.FloatField):
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # a whole number of hundreds of digits
                raise ValueError("is far too large a number") from None
        raise ValueError(f"must be a number, not {_kind(value)}")
    if isinstance(model_field, models.JSONField):
        expected = type(model_field.get_default())
        if isinstance(value, expected):
            return value
        raise ValueError(
            f"must be a {'mapping' if expected is dict else 'list'}, not {_kind(value)}"
        )
    if isinstance(value, str):
        return value
    raise ValueError(f"must be a string (quote it), not {_kind(value)}")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool | int | float):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else type(value).__name__


def _assign(obj: ConfigObject, values: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Set the file's values on obj; returns the fields that changed, with old and new values."""
    changed = []
    for name, value in values.items():
        old = getattr(obj, name)
        if obj.pk is None or old != value:
            changed.append((name, old if obj.pk else None, value))
        setattr(obj, name, value)
    return changed


def _mask_changes(changed: list[tuple[str, Any, Any]]) -> None:
    """Describe secret maps by name only: a plan is printed (CI logs), tokens included."""
    for index, (name, old, new) in enumerate(changed):
        if name in SECRET_FIELDS:
            old_tokens = old or {}
            shown = {
                key: secrets.MASK if old_tokens.get(key) == token else f"{secrets.MASK} (new value)"
                for key, token in new.items()
            }
            changed[index] = (
                name,
                {key: secrets.MASK for key in old_tokens} if old else old,
                shown,
            )


def _errors(obj: ConfigObject, exclude: set[str]) -> dict[str, list[str]]:
    try:
        obj.full_clean(exclude=exclude)
    except ValidationError as exc:
        return dict(exc.message_dict)
    return {}


# --- apply: one config change ------------------------------------------------------------------


def apply(change_plan: Plan) -> int:
    """Write a plan in one config change. Returns the config version (unchanged for no changes)."""
    if not change_plan:
        return services.config_version()
    doc = change_plan.document
    with services.config_change(f"apply {doc.source}: {len(change_plan.changes)} changes"):
        for change in change_plan.changes:
            if change.action == "delete":
                services.remove(change.obj)
                continue
            _relink(change.obj)
            # Validated again now that every parent and pinned server has an id; a problem here
            # rolls the whole file back.
            errors = _errors(change.obj, set())
            if errors:
                problems = [
                    doc.problem(
                        change.path if n == NON_FIELD_ERRORS else (*change.path, n), " ".join(m)
                    )
                    for n, m in errors.items()
                ]
                raise ConfigFileError(doc.source, problems)
            change.obj.save()
    return services.config_version()


def _relink(obj: ConfigObject) -> None:
    # A parent created earlier in this change got its id on save; assigning the cached object
    # again copies that id into the foreign-key column.
    if isinstance(obj, Server):
        obj.pool = obj.pool
    elif isinstance(obj, AffinityRule):
        obj.pool = obj.pool
        if obj.pin_server is not None:
            obj.pin_server = obj.pin_server
    elif not isinstance(obj, Pool):  # the identity section's rows
        for field in obj._meta.concrete_fields:
            if isinstance(field, models.ForeignKey) and field.is_cached(obj):
                setattr(obj, field.name, getattr(obj, field.name))


def apply_text(text: str, source: str, *, prune: bool = False, dry_run: bool = False) -> Plan:
    """Load, plan and (unless dry_run) apply a file. Raises ConfigFileError; writes nothing then."""
    document = load(text, source)
    if dry_run:
        return plan(document, prune=prune)
    # Plan and write in one transaction so a concurrent admin edit cannot slip in between.
    with transaction.atomic():
        change_plan = plan(document, prune=prune)
        apply(change_plan)
    return change_plan


# --- export ------------------------------------------------------------------------------------


def export_data(*, include_secrets: bool = False) -> dict[str, Any]:
    """The current config as plain data, in the file's format and a stable order. Secret values
    are masked (applying them back keeps what is stored) unless `include_secrets`."""
    pools = Pool.objects.order_by("slug").prefetch_related(
        Prefetch("servers", queryset=Server.objects.order_by("priority", "name")),
        Prefetch(
            "affinity_rules",
            queryset=AffinityRule.objects.select_related("pin_server").order_by("order", "id"),
        ),
    )
    data: dict[str, Any] = {
        "pools": [
            {
                **{name: getattr(pool, name) for name in POOL_FIELDS},
                "servers": [_server_data(server, include_secrets) for server in pool.servers.all()],
                "affinity_rules": [_rule_data(rule) for rule in pool.affinity_rules.all()],
            }
            for pool in pools
        ]
    }
    identity = identity_export()
    if identity:
        data["identity"] = identity
    return data


def _server_data(server: Server, include_secrets: bool) -> dict[str, Any]:
    data = {}
    for name in SERVER_FILE_FIELDS:
        value = getattr(server, name)
        if name in SECRET_FIELDS:
            if not value:
                continue  # most servers have none; a file that leaves them out keeps them
            what = f"server {server.name!r} (id {server.pk}): {name.replace('_', ' ')}"
            value = secrets.reveal(value, what=what) if include_secrets else secrets.masked(value)
        data[name] = value
    return data


def _rule_data(rule: AffinityRule) -> dict[str, Any]:
    data = {name: getattr(rule, name) for name in RULE_FIELDS if name != "pin_server"}
    data["pin_server"] = rule.pin_server.name if rule.pin_server else None
    return {name: data[name] for name in RULE_FIELDS}


def export(*, include_secrets: bool = False) -> str:
    header = "# mcppool config: apply with `mcppool apply FILE` (API keys are not exported)\n"
    if include_secrets:
        header += "# CONTAINS SECRET VALUES IN PLAINTEXT: store and send this file as a secret\n"
    else:
        header += (
            "# Secret values are masked (••••); applying a masked value keeps the stored one\n"
        )
    return header + dump(export_data(include_secrets=include_secrets))


class _Dumper(yaml.SafeDumper):
    """Block style with indented lists; short lists of words inline; multi-line text as `|`."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.SequenceNode:
    flow = all(isinstance(item, str | int | float) for item in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
