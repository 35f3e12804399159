"""Test settings: the real settings module, with a fixed secret and eager Celery."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-not-secret")
os.environ.setdefault(
    "MCPPOOL_VAR_DIR", os.path.join(os.path.dirname(__file__), "..", "var", "test")
)

# The stdio programs the tests start (an explicit list, as a deployment would give): the
# interpreter running the tests (their own upstreams, mcp-server-time, the SDK's servers), npm's
# server-everything under node, and names that exist only to be saved or to fail to start.
# Set in the environment so gateways and workers the tests start as subprocesses get it too.
os.environ.setdefault(
    "MCPPOOL_STDIO_COMMANDS", "python, node, x, /nonexistent, /nonexistent/mcp-server"
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
