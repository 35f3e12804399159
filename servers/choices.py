"""Choice sets of the operator's model. Values are the wire/YAML words; the engine mirrors them."""

from django.db import models


class Strategy(models.TextChoices):
    ROUND_ROBIN = "round_robin", "Round robin (smooth weighted)"
    LEAST_CONNECTIONS = "least_connections", "Least connections (P2C)"
    HEALTH_BASED = "health_based", "Health based (P2C, peak-EWMA latency)"


class SessionMode(models.TextChoices):
    SHARED = "shared", "Shared (stateless tools, multiplexed)"
    STICKY = "sticky", "Sticky (one upstream session per client session)"


class RetryPolicy(models.TextChoices):
    SAFE = "safe", "Undelivered calls and read-only/idempotent tools"
    UNDELIVERED = "undelivered", "Only calls that never reached a server"
    NEVER = "never", "Never retry"


class Transport(models.TextChoices):
    STREAMABLE_HTTP = "streamable_http", "Streamable HTTP"
    STDIO = "stdio", "stdio (child process)"


class ServerState(models.TextChoices):
    ENABLED = "enabled", "Enabled"
    DRAINING = "draining", "Draining"
    DISABLED = "disabled", "Disabled"


class Health(models.TextChoices):
    UNKNOWN = "unknown", "Unknown"
    UP = "up", "Up"
    DOWN = "down", "Down"
    EJECTED = "ejected", "Ejected"
    RECOVERING = "recovering", "Recovering"


class Era(models.TextChoices):
    AUTO = "auto", "Auto (negotiate)"
    HANDSHAKE = "handshake", "Handshake era (2024-11-05 … 2025-11-25)"
    MODERN = "modern", "2026-07-28 (server/discover)"


class MatchOn(models.TextChoices):
    API_KEY = "api_key", "API key name"
    HEADER = "header", "Request header"
    CLIENT_ID = "client_id", "Client id"
    TOOL = "tool", "Tool name"


class MatchType(models.TextChoices):
    EXACT = "exact", "Exact"
    PREFIX = "prefix", "Prefix"
    REGEX = "regex", "Regular expression"


class AffinityAction(models.TextChoices):
    PIN = "pin", "Pin to a server"
    HASH = "hash", "Hash on the matched value"
