"""Revoking an API key takes effect within seconds on every web process: two real web processes
on the same PostgreSQL and Redis both accept a key, the key is revoked by a separate service
process (as `manage.py` or the admin would), and both refuse it.

The processes poll the database only once an hour here, so what delivers the revocation is the
`config.changed` event over Redis; without Redis the poll (1 s by default) does the same
(`tests/api/test_call.py::test_call_tool_key_revoked_while_running_is_refused_after_reload`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.conftest import call, echo_pool_with_key, manage, start_web, until, web_env
from tests.upstreams.procs import UpstreamProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

REVOKE = (
    "from servers import services; from servers.models import ApiKey; "
    "services.revoke_api_key(ApiKey.objects.get(name='app'))"
)


def test_revoked_key_is_refused_by_every_web_process_within_seconds(
    webs: list[UpstreamProcess],
    replica: UpstreamProcess,
    redis_url: str,
    channel_prefix: str,
    var_dir: Path,
) -> None:
    # given two web processes on the same database and Redis, and a key both accept
    key = echo_pool_with_key(replica.url)
    env = web_env(var_dir, redis_url=redis_url, MCPPOOL_CHANNEL_PREFIX=channel_prefix,
                  MCPPOOL_CONFIG_POLL_SECONDS="3600")  # fmt: skip
    for name in ("web-1", "web-2"):
        webs.append(start_web(env, name))
    for web in webs:
        assert call(web.port, key, "echo") == 200

    # when the key is revoked by another service process
    manage(env, REVOKE)

    # then both web processes refuse it within seconds
    for web in webs:
        refused = until(lambda w=web: call(w.port, key, "echo") == 401, 10)  # type: ignore[misc]
        assert refused, f"{web.name} still accepts the revoked key:\n{web.output()}"
