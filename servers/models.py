"""The operator's model: pools of replicas, affinity rules, API keys, and the config version."""

from __future__ import annotations

import math
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from servers import choices, secrets

# Every numeric config field has a range, checked here (so the admin, the REST API and
# `mcppool apply` refuse the same values with the same message) and listed in docs/security.md.
# Floats must also be finite: NaN passes any comparison and infinity overflows what uses it.


def finite_number(value: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError("Give a finite number.", code="not_finite")


def _positive(maximum: float) -> list[Any]:
    return [finite_number, MinValueValidator(0.001), MaxValueValidator(maximum)]


def _between(low: float, high: float) -> list[Any]:
    return [finite_number, MinValueValidator(low), MaxValueValidator(high)]


RATE_LIMIT_MAX = 1_000_000  # calls per minute


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# The pool's numeric knobs, named alike on the model, in config files and in the engine's
# PoolConfig: config files and the runtime adapter both list them from here.
POOL_TUNING = (
    "sessions_per_server",
    "calls_per_session",
    "acquire_timeout",
    "call_timeout",
    "retry_budget_percent",
    "retry_budget_min",
    "check_interval",
    "check_timeout",
    "start_timeout",
    "fall",
    "rise",
    "consecutive_failures",
    "ejection_base",
    "ejection_cap",
    "max_ejection_percent",
    "panic_threshold",
    "slow_start_window",
    "rate_limit_per_minute",
    "max_sticky_sessions",
    "max_sticky_sessions_per_key",
)


class Pool(models.Model):
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=50, unique=True, help_text="Used in URLs: /mcp/<slug>/")
    description = models.TextField(blank=True)
    strategy = models.CharField(
        max_length=20, choices=choices.Strategy.choices, default=choices.Strategy.ROUND_ROBIN
    )
    session_mode = models.CharField(
        max_length=10, choices=choices.SessionMode.choices, default=choices.SessionMode.SHARED
    )
    # Sessions (HikariCP / design defaults).
    sessions_per_server = models.PositiveSmallIntegerField(default=2, validators=_between(1, 64))
    calls_per_session = models.PositiveSmallIntegerField(default=32, validators=_between(1, 1024))
    acquire_timeout = models.FloatField(default=5.0, validators=_positive(300))
    call_timeout = models.FloatField(default=30.0, validators=_positive(3600))
    # Retries (Envoy retry budget).
    retry_policy = models.CharField(
        max_length=12, choices=choices.RetryPolicy.choices, default=choices.RetryPolicy.SAFE
    )
    retry_budget_percent = models.FloatField(default=20.0, validators=_between(0, 100))
    retry_budget_min = models.PositiveSmallIntegerField(default=3, validators=_between(0, 1000))
    # Active health checks (HAProxy fall/rise).
    check_interval = models.FloatField(default=5.0, validators=_between(0.5, 86400))
    check_timeout = models.FloatField(
        default=2.0, validators=_positive(60), help_text="A probe that takes longer fails"
    )
    # Opening a stdio session: spawning the server and the MCP negotiation. Loaded machines have
    # taken 19 s to start a Python interpreter; a probe never kills a server still starting
    # within this time (docs/health.md, "Stdio servers").
    start_timeout = models.FloatField(
        default=30.0,
        validators=_positive(600),
        help_text="How long a stdio server may take to start (spawn + negotiation)",
    )
    fall = models.PositiveSmallIntegerField(default=3, validators=_between(1, 100))
    rise = models.PositiveSmallIntegerField(default=2, validators=_between(1, 100))
    # Passive health: outlier detection (Envoy).
    consecutive_failures = models.PositiveSmallIntegerField(default=5, validators=_between(1, 1000))
    ejection_base = models.FloatField(default=30.0, validators=_positive(3600))
    ejection_cap = models.FloatField(default=300.0, validators=_positive(86400))
    max_ejection_percent = models.FloatField(default=50.0, validators=_between(0, 100))
    panic_threshold = models.FloatField(default=50.0, validators=_between(0, 100))
    slow_start_window = models.FloatField(default=30.0, validators=_between(0, 3600))
    # Admission: calls per minute for the whole pool, over every key (0 = unlimited).
    rate_limit_per_minute = models.PositiveIntegerField(
        default=0, validators=_between(0, RATE_LIMIT_MAX), help_text="0 = unlimited"
    )
    # Sticky client sessions each own an upstream session (a child process over stdio): capped
    # per web process, for the pool and for each key, so one key cannot spawn without bound.
    max_sticky_sessions = models.PositiveIntegerField(
        default=100,
        validators=_between(1, 10_000),
        help_text="Sticky client sessions of this pool at once, per web process",
    )
    max_sticky_sessions_per_key = models.PositiveIntegerField(
        default=20,
        validators=_between(1, 10_000),
        help_text="Sticky client sessions one API key may hold in this pool, per web process",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        # Field validators report missing values; compare only what is there.
        timeout, interval = self.check_timeout, self.check_interval
        if timeout is not None and interval is not None and timeout >= interval:
            errors["check_timeout"] = "The check timeout must be shorter than the interval."
        base, cap = self.ejection_base, self.ejection_cap
        if base is not None and cap is not None and cap < base:
            errors["ejection_cap"] = "The ejection cap must be at least the base time."
        if errors:
            raise ValidationError(errors)


class Server(models.Model):
    """One replica of a pool: an MCP server reached over Streamable HTTP or stdio."""

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="servers")
    name = models.CharField(
        max_length=100,
        validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", "Letters, digits, . _ -")],
    )
    transport = models.CharField(max_length=20, choices=choices.Transport.choices)
    url = models.URLField(max_length=500, blank=True, help_text="Streamable HTTP endpoint")
    headers = models.JSONField(default=dict, blank=True, help_text="Extra HTTP headers")
    command = models.CharField(max_length=500, blank=True, help_text="Program to run (stdio)")
    args = models.JSONField(default=list, blank=True, help_text="Argument list (never a shell)")
    env = models.JSONField(default=dict, blank=True, help_text="Environment for the process")
    cwd = models.CharField(max_length=500, blank=True, help_text="Working directory (stdio)")
    # Secret values, name → Fernet token (`servers.secrets`): merged over `headers` / `env` when
    # the runtime builds its config, masked everywhere an operator or a log could see them.
    secret_headers = models.JSONField(
        default=dict, blank=True, help_text="HTTP headers whose values are secret (encrypted)"
    )
    secret_env = models.JSONField(
        default=dict, blank=True, help_text="Environment values that are secret (encrypted)"
    )
    weight = models.PositiveIntegerField(default=1, validators=_between(1, 1000))
    priority = models.PositiveSmallIntegerField(
        default=0, validators=_between(0, 9), help_text="0 takes traffic first"
    )
    state = models.CharField(
        max_length=10, choices=choices.ServerState.choices, default=choices.ServerState.ENABLED
    )
    max_in_flight = models.PositiveIntegerField(
        default=0, validators=_between(0, 100_000), help_text="0 = no extra cap"
    )
    era = models.CharField(max_length=10, choices=choices.Era.choices, default=choices.Era.AUTO)
    # Recorded by the runtime and the health checks (never set by the operator).
    negotiated_era = models.CharField(max_length=10, choices=choices.Era.choices, blank=True)
    protocol_version = models.CharField(max_length=20, blank=True)
    health = models.CharField(
        max_length=10, choices=choices.Health.choices, default=choices.Health.UNKNOWN
    )
    health_changed_at = models.DateTimeField(null=True, blank=True)
    health_reason = models.CharField(max_length=500, blank=True)
    consecutive_ok = models.PositiveIntegerField(default=0)
    consecutive_failed = models.PositiveIntegerField(default=0)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    ejections = models.PositiveIntegerField(default=0)
    tools_count = models.PositiveIntegerField(null=True, blank=True)
    tools_hash = models.CharField(max_length=64, blank=True)
    tools_differ = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pool__name", "priority", "name"]
        constraints = [
            models.UniqueConstraint(fields=["pool", "name"], name="server_unique_name_in_pool"),
        ]

    def __str__(self) -> str:
        return f"{self.pool.slug}/{self.name}" if self.pool_id else self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Every write path (admin, REST, YAML apply, services) ends here: secrets follow their
        # target. A save limited to some fields writes the dropped secrets too.
        update_fields = kwargs.get("update_fields")
        if secrets.drop_on_new_target(self, update_fields) and update_fields is not None:
            kwargs["update_fields"] = {*update_fields, *secrets.SECRET_FIELDS}
        super().save(*args, **kwargs)
        # What this write supplied counts for this write only.
        for field in secrets.SECRET_FIELDS:
            setattr(self, field, dict(getattr(self, field) or {}))

    def clean(self) -> None:  # noqa: C901  # one check per transport field, flat on purpose
        errors: dict[str, str] = {}
        if self.transport == choices.Transport.STREAMABLE_HTTP:
            if not self.url:
                errors["url"] = "A Streamable HTTP server needs a URL."
            elif not self.url.lower().startswith(("http://", "https://")):
                errors["url"] = "The URL must start with http:// or https://."
            if self.command or self.args:
                errors["command"] = "A Streamable HTTP server takes no command or arguments."
        elif self.transport == choices.Transport.STDIO:
            if not self.command:
                errors["command"] = "A stdio server needs a program to run."
            elif any(c.isspace() for c in self.command) and "/" not in self.command:
                errors["command"] = (
                    "Give the program alone (no spaces); put its arguments in the argument list."
                )
            if self.url:
                errors["url"] = "A stdio server takes no URL."
        if not isinstance(self.args, list) or not all(isinstance(a, str) for a in self.args):
            errors["args"] = "Arguments must be a list of strings."
        if not _is_str_map(self.headers) or not all(_HEADER_NAME.match(k) for k in self.headers):
            errors["headers"] = "Headers must map valid header names to strings."
        if not _is_str_map(self.env) or not all(_ENV_NAME.match(k) for k in self.env):
            errors["env"] = "The environment must map variable names to strings."
        for field, plain, pattern, kind, fold in (
            ("secret_headers", self.headers, _HEADER_NAME, "header", str.lower),
            ("secret_env", self.env, _ENV_NAME, "variable", str),
        ):
            tokens = getattr(self, field)
            if not _is_str_map(tokens) or not all(pattern.match(k) for k in tokens):
                errors[field] = f"Secret values must map valid {kind} names to strings."
                continue
            plain_names = {fold(k) for k in plain} if isinstance(plain, dict) else set()
            if both := sorted(k for k in tokens if fold(k) in plain_names):
                errors[field] = f"{', '.join(both)}: set both as plain and as secret; keep one."
        if not errors:
            self._check_policy(errors)
        if errors:
            raise ValidationError(errors)

    def _check_policy(self, errors: dict[str, str]) -> None:
        """The operator's upstream policy (settings.MCPPOOL_UPSTREAM_POLICY, from the environment):
        which programs may run, where requests may go. Its refusals are ValueErrors naming the
        field (`balancing.engine.policy.PolicyRefused`); the engine checks again at spawn and at
        connect time."""
        policy = settings.MCPPOOL_UPSTREAM_POLICY
        try:
            if self.transport == choices.Transport.STREAMABLE_HTTP:
                policy.outbound.check_url(self.url)
            elif self.transport == choices.Transport.STDIO:
                names = {**self.env, **self.secret_env}
                policy.commands.check(self.command, self.args, names, self.cwd)
        except ValueError as refused:
            errors[getattr(refused, "field", "command")] = str(refused)


def _is_str_map(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


class AffinityRule(models.Model):
    """Routes matching calls to one server (pin) or to a stable server per value (hash)."""

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="affinity_rules")
    order = models.PositiveIntegerField(
        default=0, validators=_between(0, 1_000_000), help_text="Rules are tried in this order"
    )
    match_on = models.CharField(max_length=10, choices=choices.MatchOn.choices)
    header = models.CharField(max_length=100, blank=True, help_text="Header name (match on header)")
    match_type = models.CharField(
        max_length=10, choices=choices.MatchType.choices, default=choices.MatchType.EXACT
    )
    pattern = models.CharField(max_length=500, blank=True, help_text="Empty matches any value")
    action = models.CharField(max_length=5, choices=choices.AffinityAction.choices)
    pin_server = models.ForeignKey(
        Server, null=True, blank=True, on_delete=models.CASCADE, related_name="pinned_by"
    )
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["pool__name", "order", "id"]
        constraints = [
            # Rules are tried in order, and config files name a rule by (pool, order).
            models.UniqueConstraint(fields=["pool", "order"], name="rule_unique_order_in_pool"),
        ]

    def __str__(self) -> str:
        target = self.pin_server.name if self.pin_server_id and self.pin_server else "hash"
        return f"{self.match_on} {self.match_type} {self.pattern!r} → {target}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.match_on == choices.MatchOn.HEADER:
            if not self.header or not _HEADER_NAME.match(self.header):
                errors["header"] = "Matching on a header needs a valid header name."
        elif self.header:
            errors["header"] = "A header name is only used when matching on a header."
        if self.match_type == choices.MatchType.REGEX:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                errors["pattern"] = f"The regular expression does not compile: {exc}."
        if self.action == choices.AffinityAction.PIN:
            if not self.pin_server_id:
                errors["pin_server"] = "A pin rule needs the server to pin to."
            elif self.pool_id and self.pin_server and self.pin_server.pool_id != self.pool_id:
                errors["pin_server"] = "The pinned server must belong to the same pool."
        elif self.pin_server_id:
            errors["pin_server"] = "Only a pin rule names a server."
        if errors:
            raise ValidationError(errors)


class ApiKey(models.Model):
    """An app's credential. The secret is shown once; only its SHA-256 and a prefix are kept."""

    name = models.CharField(max_length=100, unique=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="api_keys",
    )
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    hashed_secret = models.CharField(max_length=64, editable=False)
    pools = models.ManyToManyField(Pool, blank=True, related_name="api_keys")
    all_pools = models.BooleanField(default=False, help_text="May use every pool")
    is_admin = models.BooleanField(default=False, help_text="May change config through the API")
    rate_limit_per_minute = models.PositiveIntegerField(
        default=0, validators=_between(0, RATE_LIMIT_MAX), help_text="0 = unlimited"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"  # not Django's "Api key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class ConfigState(models.Model):
    """One row: the config version, bumped in the same transaction as every config write.

    Runtimes compare it with what they loaded; in the embedded default (no Redis) polling it is
    how config changes reach the web process.
    """

    version = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"config v{self.version}"


class RuntimeReport(models.Model):
    """What a web process's runtime last saw of a stdio server it runs: does it answer, how fast,
    in which protocol era. The health check uses a fresh report instead of a probe of its own, so
    checking a running stdio server costs no second process (docs/health.md, "Stdio servers")."""

    server = models.OneToOneField(
        Server, on_delete=models.CASCADE, primary_key=True, related_name="runtime_report"
    )
    at = models.DateTimeField(db_index=True)
    ok = models.BooleanField()
    starting = models.BooleanField(default=False, help_text="Still starting within its timeout")
    latency_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    era = models.CharField(max_length=10, blank=True)
    protocol_version = models.CharField(max_length=20, blank=True)

    def __str__(self) -> str:
        return f"{self.server_id}: {'ok' if self.ok else 'failing'} at {self.at:%H:%M:%S}"


class Flip(models.Model):
    """One change of a server's health state, with why: the dashboard's flip history."""

    class Source(models.TextChoices):
        CHECK = "check", "Active check"
        PASSIVE = "passive", "Live traffic (outlier detection)"
        OPERATOR = "operator", "Operator"

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="flips")
    at = models.DateTimeField(default=timezone.now, db_index=True)
    old = models.CharField(max_length=10, choices=choices.Health.choices)
    new = models.CharField(max_length=10, choices=choices.Health.choices)
    source = models.CharField(max_length=10, choices=Source.choices)
    reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.server} {self.old} → {self.new}"
