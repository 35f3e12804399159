"""Settings read from the environment: cast, and a bad value stops start-up naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_SCRUBBED = {"DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "SECRET_KEY_FILE"}


def _load_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    clean.update(MCPPOOL_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="mcppool.settings", **env)
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DEBUG, s.MCPPOOL_CONFIG_POLL_SECONDS, s.DATABASES['default']['ENGINE'], "
        "s.CHANNEL_LAYERS['default']['BACKEND'], s.CELERY_BROKER_URL.split(':')[0])"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("DEBUG", "maybe", "DEBUG='maybe' is not a boolean"),
        (
            "MCPPOOL_CONFIG_POLL_SECONDS",
            "soon",
            "MCPPOOL_CONFIG_POLL_SECONDS='soon' is not a number",
        ),
        ("MCPPOOL_MAX_BODY_BYTES", "12", "MCPPOOL_MAX_BODY_BYTES=12 is below the minimum"),
        ("DB_CONN_MAX_AGE", "1.5", "DB_CONN_MAX_AGE='1.5' is not an integer"),
        ("MCPPOOL_OUTBOUND_DENY", "10.0.0.0/33", "MCPPOOL_OUTBOUND_DENY: '10.0.0.0/33' is not"),
        ("MCPPOOL_OUTBOUND_ALLOW", "lan", "MCPPOOL_OUTBOUND_ALLOW: 'lan' is not a network"),
        ("MCPPOOL_STDIO_COMMANDS", "python '-m", "MCPPOOL_STDIO_COMMANDS: No closing quotation"),
        ("MCPPOOL_BODY_TIMEOUT_SECONDS", "0", "MCPPOOL_BODY_TIMEOUT_SECONDS=0.0 is below"),
    ],
)
def test_settings_bad_value_fails_naming_the_variable(
    tmp_path: Path, name: str, value: str, words: str
) -> None:
    result = _load_settings(tmp_path, **{name: value})
    assert result.returncode != 0
    assert words in result.stderr


def test_settings_embedded_default_needs_no_server(tmp_path: Path) -> None:
    result = _load_settings(tmp_path)
    assert result.returncode == 0, result.stderr
    debug, poll, engine, layer, broker = result.stdout.split()
    assert (debug, poll) == ("False", "1.0")
    assert engine.endswith("sqlite3")
    assert layer.endswith("InMemoryChannelLayer")
    assert broker == "sqla+sqlite"
    assert (tmp_path / "secret_key").exists()  # generated once, kept for restarts


def test_settings_servers_configured_use_them(tmp_path: Path) -> None:
    result = _load_settings(
        tmp_path,
        DATABASE_URL="postgres://u@127.0.0.1:5432/x",
        REDIS_URL="redis://127.0.0.1:6379/0",
        SECRET_KEY="k",
        DEBUG="yes",
        MCPPOOL_CONFIG_POLL_SECONDS="0.5",
    )
    assert result.returncode == 0, result.stderr
    debug, poll, engine, layer, broker = result.stdout.split()
    assert (debug, poll, broker) == ("True", "0.5", "redis")
    assert engine.endswith("postgresql")
    assert layer.endswith("RedisChannelLayer")


def test_settings_without_secret_key_off_debug_with_servers_fails(tmp_path: Path) -> None:
    result = _load_settings(tmp_path, DATABASE_URL="postgres://u@127.0.0.1:5432/x")
    assert result.returncode != 0
    assert "SECRET_KEY is required when DEBUG is off" in result.stderr


def test_settings_secret_key_file_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "key.txt"
    secret.write_text("from-a-file\n")
    result = _load_settings(
        tmp_path, DATABASE_URL="postgres://u@127.0.0.1:5432/x", SECRET_KEY_FILE=str(secret)
    )
    assert result.returncode == 0, result.stderr


def test_settings_upstream_policy_denies_the_services_own_database_and_broker(
    tmp_path: Path,
) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    clean.update(
        MCPPOOL_VAR_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="mcppool.settings",
        SECRET_KEY="x",
        DATABASE_URL="postgres://u@db.internal:6543/app",
        REDIS_URL="redis://cache.internal/0",
    )
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.MCPPOOL_UPSTREAM_POLICY.outbound.services, s.MCPPOOL_STDIO_COMMANDS)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "(('db.internal', 6543), ('cache.internal', 6379))" in result.stdout
