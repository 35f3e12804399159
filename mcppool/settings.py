"""The one settings module. Everything that differs between machines comes from the environment.

Embedded default (no DATABASE_URL, no REDIS_URL): SQLite file under `var/`, Celery over kombu's
SQLAlchemy transport on a SQLite file, the in-memory channel layer, a secret key generated once
into `var/secret_key`. With DATABASE_URL / REDIS_URL set the same code runs on PostgreSQL / Redis.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from balancing.engine.policy import CommandPolicy, OutboundPolicy, UpstreamPolicy, networks
from mcppool.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("MCPPOOL_VAR_DIR", str(BASE_DIR / "var")))
# Private: it holds the SQLite database and the generated keys.
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", default=False)
REDIS_URL = env_str("REDIS_URL")
DATABASE_URL = env_str("DATABASE_URL")
EMBEDDED = not REDIS_URL and not DATABASE_URL


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        return key
    if not DEBUG and not EMBEDDED:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off")
    # Embedded default / development: generate once, keep it so sessions survive restarts.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()


def _secrets_keys() -> list[str]:
    """Fernet keys for upstream secrets at rest (`servers.secrets`); the first one encrypts."""
    keys = env_list("MCPPOOL_SECRETS_KEY")
    if keys or (not DEBUG and not EMBEDDED):
        # Not required to start: without a key, storing or reading a secret fails with a
        # message saying how to make one, and servers without secrets work as before.
        return keys
    # Embedded default / development: generate once, private from the first byte, and put in
    # place by link() (atomic, never replaces): the web process and the worker starting together
    # agree on one key, and neither ever reads a half-written file.
    key_file = VAR_DIR / "secrets_key"
    if not key_file.exists():
        draft = VAR_DIR / f".secrets_key.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        try:
            with contextlib.suppress(FileExistsError):
                os.link(draft, key_file)
        finally:
            draft.unlink()
    return [key_file.read_text().strip()]


MCPPOOL_SECRETS_KEYS = _secrets_keys()


def own_addresses(hostname: str) -> list[str]:
    """The addresses `hostname` resolves to, as `Host` values (IPv6 bracketed): with them in
    ALLOWED_HOSTS a container accepts requests to its own IP — what Prometheus sends when it
    finds each web container by DNS service discovery (`deploy/prometheus.yml`)."""
    try:
        infos = socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    found = {str(info[4][0]) for info in infos}
    return sorted(f"[{a}]" if ":" in a else a for a in found)


ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
if env_bool("MCPPOOL_ALLOW_OWN_ADDRESSES"):
    ALLOWED_HOSTS += own_addresses(socket.gethostname())
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    # daphne's app only swaps in its ASGI `runserver`; importing it (Twisted) costs every other
    # process ~0.3 s of CPU at start-up, so only `runserver` loads it (tests/test_cli.py).
    *(["daphne"] if "runserver" in sys.argv else []),
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_celery_beat",
    "django_prometheus",
    "servers",
    "servers.identity",
    "balancing",
    "monitoring",
    "audit",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files for the admin and dashboard under any ASGI server, DEBUG or not.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Near the end: process_exception hooks are asked bottom-up, so this one answers first (the
    # Prometheus one after it only counts). A lost database is a 503 page, not a 500.
    "mcppool.middleware.DatabaseUnavailableMiddleware",
    "audit.changes.actor_middleware",  # who makes a config change (admin user, API key)
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "mcppool.urls"
ASGI_APPLICATION = "mcppool.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL or f"sqlite:///{VAR_DIR / 'mcppool.sqlite3'}",
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + a busy timeout let the web process, the worker and beat share one SQLite file.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns about a missing root, even with finders
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []

# Served from the apps' static folders directly, so no collectstatic step is needed to start.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LOGIN_URL = "/admin/login/"

# Channels: Redis when configured (events reach every web process); otherwise in-memory, and
# the runtime polls the config version in the DB instead.
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                "prefix": env_str("MCPPOOL_CHANNEL_PREFIX", "mcppool"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Celery: Redis when configured; otherwise kombu's SQLAlchemy transport over a SQLite file.
CELERY_BROKER_URL = REDIS_URL or f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}"
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = TIME_ZONE

# Security with DEBUG off. Cookies are Secure unless the embedded default serves plain HTTP on
# 127.0.0.1. TLS itself usually ends at a proxy in front: HSTS and the HTTPS redirect are the
# operator's call (HSTS is hard to take back), so they are off until set; `manage.py check
# --deploy` names them. The hot path (MCP endpoint, REST tool calls) is served before Django's
# middleware, so the redirect covers the admin, dashboard and the rest of the API only.
if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", default=not EMBEDDED)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", default=not EMBEDDED)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=False)
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=False)
    # Prometheus scrapes over plain HTTP inside the deployment.
    SECURE_REDIRECT_EXEMPT = env_list("SECURE_REDIRECT_EXEMPT", [r"^metrics$"])
# Opt in only behind a proxy that sets X-Forwarded-Proto itself (and drops a client's own):
# otherwise any client could claim to be on HTTPS.
if env_bool("MCPPOOL_TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 12 * 3600, minimum=60)  # an operator's day
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# The service's own knobs.
MCPPOOL_CONFIG_POLL_SECONDS = env_float("MCPPOOL_CONFIG_POLL_SECONDS", 1.0, minimum=0.1)
MCPPOOL_SHUTDOWN_GRACE_SECONDS = env_float("MCPPOOL_SHUTDOWN_GRACE_SECONDS", 10.0, minimum=0.0)
MCPPOOL_MAX_BODY_BYTES = env_int("MCPPOOL_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
MCPPOOL_HEALTH_RETENTION_DAYS = env_int("MCPPOOL_HEALTH_RETENTION_DAYS", 7, minimum=1)
MCPPOOL_RUNTIME_ENABLED = env_bool("MCPPOOL_RUNTIME_ENABLED", default=True)
# A request body must arrive within this time (408 after): a client declaring a large body and
# sending nothing must not hold a connection open.
MCPPOOL_BODY_TIMEOUT_SECONDS = env_float("MCPPOOL_BODY_TIMEOUT_SECONDS", 10.0, minimum=0.1)

# What upstreams may be (`balancing/engine/policy.py`, docs/security.md). Programs a stdio server
# may run: full paths or globs, a bare name as written in the config, optionally followed by the
# arguments it must start with; shells only when listed by full path. The default allows what
# examples/pools.yaml needs and nothing else.
MCPPOOL_STDIO_COMMANDS = env_list("MCPPOOL_STDIO_COMMANDS", ["python -m mcp_server_time"])
# Whether an admin API key may create or change stdio servers over REST (it runs programs).
MCPPOOL_API_STDIO = env_bool("MCPPOOL_API_STDIO", default=False)
# Where HTTP upstreams may point: extra denied and allowed networks (CIDR; allowed wins over
# denied), and one switch to deny loopback and private ranges too. Link-local and metadata
# addresses and this service's own database and broker are denied by default.
MCPPOOL_OUTBOUND_ALLOW = env_list("MCPPOOL_OUTBOUND_ALLOW")
MCPPOOL_OUTBOUND_DENY = env_list("MCPPOOL_OUTBOUND_DENY")
MCPPOOL_OUTBOUND_DENY_PRIVATE = env_bool("MCPPOOL_OUTBOUND_DENY_PRIVATE", default=False)


def _service_endpoints() -> list[tuple[str, int]]:
    """The database and broker this service uses: never an upstream's address."""
    found = []
    database = DATABASES["default"]
    if database.get("HOST"):
        default_port = {"postgresql": 5432, "mysql": 3306}.get(
            str(database["ENGINE"]).rsplit(".", 1)[-1], 0
        )
        found.append((str(database["HOST"]), int(database.get("PORT") or default_port)))
    if REDIS_URL:
        redis = urlsplit(REDIS_URL)
        found.append((redis.hostname or "localhost", redis.port or 6379))
    return [(host, port) for host, port in found if port]


def _upstream_policy() -> UpstreamPolicy:
    try:
        commands = CommandPolicy.parse(MCPPOOL_STDIO_COMMANDS)
    except ValueError as exc:
        raise ImproperlyConfigured(f"MCPPOOL_STDIO_COMMANDS: {exc}") from None
    for name in ("MCPPOOL_OUTBOUND_ALLOW", "MCPPOOL_OUTBOUND_DENY"):
        try:
            networks(globals()[name])
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {exc}") from None
    outbound = OutboundPolicy.build(
        allow=MCPPOOL_OUTBOUND_ALLOW,
        deny=MCPPOOL_OUTBOUND_DENY,
        deny_private=MCPPOOL_OUTBOUND_DENY_PRIVATE,
        services=_service_endpoints(),
    )
    return UpstreamPolicy(commands, outbound)


MCPPOOL_UPSTREAM_POLICY = _upstream_policy()

# The audit trail (docs/observability.md): a JSON line per tool call and config change on the
# `mcppool.audit` logger; database rows for pools that opt in, written in batches.
MCPPOOL_AUDIT_LOG = env_bool("MCPPOOL_AUDIT_LOG", default=False)
MCPPOOL_AUDIT_RETENTION_DAYS = env_int("MCPPOOL_AUDIT_RETENTION_DAYS", 30, minimum=1)
MCPPOOL_AUDIT_FLUSH_SECONDS = env_float("MCPPOOL_AUDIT_FLUSH_SECONDS", 1.0, minimum=0.05)
MCPPOOL_AUDIT_BUFFER = env_int("MCPPOOL_AUDIT_BUFFER", 100_000, minimum=100)

# OAuth protected resource (docs/security.md): the public base URL pools' resource URLs (token
# audiences) are built from; "" derives it from each request's scheme and Host.
MCPPOOL_PUBLIC_URL = env_str("MCPPOOL_PUBLIC_URL", "").rstrip("/")
MCPPOOL_JWKS_MAX_AGE_SECONDS = env_float("MCPPOOL_JWKS_MAX_AGE_SECONDS", 300.0, minimum=10.0)
MCPPOOL_JWKS_MIN_REFETCH_SECONDS = env_float("MCPPOOL_JWKS_MIN_REFETCH_SECONDS", 10.0, minimum=0.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "balancing.audit.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        # The audit stream: one JSON object per line on stdout, for the log pipeline.
        "audit": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stdout",
        },
    },
    "loggers": {"mcppool.audit": {"handlers": ["audit"], "level": "INFO", "propagate": False}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
}
