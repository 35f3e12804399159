"""With DEBUG off, settings are safe for production: `manage.py check --deploy` finds nothing the
operator has not explicitly left to the TLS proxy in front (HSTS, the HTTPS redirect)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "DEBUG": "0",
    "DATABASE_URL": "postgres://mcppool@127.0.0.1:5432/mcppool",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "ALLOWED_HOSTS": "mcppool.example.com",
}
TLS = {
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
    "SECURE_SSL_REDIRECT": "1",
    "MCPPOOL_TRUST_X_FORWARDED_PROTO": "1",
}
_SCRUBBED = {*PRODUCTION, *TLS, "SECRET_KEY", "SECRET_KEY_FILE", "SESSION_COOKIE_SECURE"}


def _run(tmp_path: Path, code: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    clean.update(
        MCPPOOL_VAR_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="mcppool.settings",
        SECRET_KEY=secrets.token_urlsafe(50),
        **env,
    )
    return subprocess.run(
        [sys.executable, *code], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60
    )


def _deploy_check(tmp_path: Path, **env: str) -> tuple[int, set[str]]:
    result = _run(tmp_path, ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **env)
    return result.returncode, set(re.findall(r"\(([a-z_]+\.[EW]\d+)\)", result.stderr))


def _setting(tmp_path: Path, expression: str, **env: str) -> str:
    code = (
        f"import django; django.setup(); from django.conf import settings as s; print({expression})"
    )
    result = _run(tmp_path, ["-c", code], **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_deploy_check_production_behind_tls_reports_nothing(tmp_path: Path) -> None:
    code, issues = _deploy_check(tmp_path, **PRODUCTION, **TLS)
    assert (code, issues) == (0, set())


def test_deploy_check_production_without_tls_knobs_names_only_hsts_and_redirect(
    tmp_path: Path,
) -> None:
    # the two decisions left to the operator (a TLS proxy may already do both)
    code, issues = _deploy_check(tmp_path, **PRODUCTION)
    assert code != 0
    assert issues == {"security.W004", "security.W008"}


def test_settings_debug_off_with_servers_makes_cookies_secure(tmp_path: Path) -> None:
    value = _setting(
        tmp_path,
        "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, "
        "s.X_FRAME_OPTIONS",
        **PRODUCTION,
    )
    assert value == "True True True DENY"


def test_settings_embedded_default_serves_plain_http_cookies(tmp_path: Path) -> None:
    # `make run` listens on http://127.0.0.1 with DEBUG off: Secure cookies would lock it out
    assert _setting(tmp_path, "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE") == "False False"


def test_settings_forwarded_proto_trusted_only_when_asked(tmp_path: Path) -> None:
    assert _setting(tmp_path, "getattr(s, 'SECURE_PROXY_SSL_HEADER', None)") == "None"
    trusted = _setting(
        tmp_path, "s.SECURE_PROXY_SSL_HEADER", **PRODUCTION, MCPPOOL_TRUST_X_FORWARDED_PROTO="1"
    )
    assert trusted == "('HTTP_X_FORWARDED_PROTO', 'https')"


def test_settings_var_dir_created_private(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    code = "import django; django.setup()"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={
            **os.environ,
            "MCPPOOL_VAR_DIR": str(var_dir),
            "DJANGO_SETTINGS_MODULE": "mcppool.settings",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert var_dir.stat().st_mode & 0o777 == 0o700
