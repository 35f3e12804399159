"""Test settings: the real settings module, with a fixed secret and eager Celery."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-not-secret")
os.environ.setdefault(
    "MCPPOOL_VAR_DIR", os.path.join(os.path.dirname(__file__), "..", "var", "test")
)

from mcppool.settings import *  # noqa: F403

CELERY_TASK_ALWAYS_EAGER = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests

_DB = DATABASES["default"]  # noqa: F405
if _DB["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not the shared-cache in-memory database: the runtime host and Celery work from
    # other threads, and shared-cache SQLite answers them "table is locked" instead of waiting.
    # One file per test run, so runs side by side never drop each other's tables.
    _DB["TEST"] = {"NAME": os.path.join(os.environ["MCPPOOL_VAR_DIR"], f"test-{os.getpid()}.db")}
