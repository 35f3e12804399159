"""Settings for the real Celery worker that `test_worker.py` starts: the service's own settings,
with a queue of the test's own, so another test run sharing this Redis never takes its tasks."""

import os

from mcppool.settings import *  # noqa: F403

CELERY_TASK_DEFAULT_QUEUE = os.environ["MCPPOOL_TEST_QUEUE"]
