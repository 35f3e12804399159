"""Test settings: the real settings module, with a fixed secret and eager Celery."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-not-secret")
os.environ.setdefault(
    "MCPPOOL_VAR_DIR", os.path.join(os.path.dirname(__file__), "..", "var", "test")
)

from mcppool.settings import *  # noqa: F403

CELERY_TASK_ALWAYS_EAGER = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
