"""The operator's model: each bad input is refused with a clear message and nothing saved."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from servers import services
from servers.models import AffinityRule, Pool, Server

pytestmark = pytest.mark.django_db


def _refused(obj: Any, field: str, words: str) -> None:
    model = type(obj)
    before = model.objects.count()
    with pytest.raises(ValidationError) as info:
        services.save(obj)
    messages = info.value.message_dict
    assert field in messages, messages
    assert words in " ".join(messages[field])
    assert model.objects.count() == before


def test_pool_defaults_follow_the_design_page() -> None:
    pool = services.save(Pool(name="P", slug="p"))
    assert (pool.sessions_per_server, pool.calls_per_session, pool.acquire_timeout) == (2, 32, 5.0)
    assert (pool.check_interval, pool.check_timeout, pool.fall, pool.rise) == (5.0, 2.0, 3, 2)
    assert (pool.ejection_base, pool.ejection_cap, pool.panic_threshold) == (30.0, 300.0, 50.0)
    assert pool.strategy == "round_robin"
    assert pool.session_mode == "shared"


def test_pool_check_timeout_not_below_interval_is_refused() -> None:
    _refused(
        Pool(name="P", slug="p", check_interval=2, check_timeout=3), "check_timeout", "shorter"
    )


def test_pool_bad_slug_is_refused() -> None:
    _refused(Pool(name="P", slug="not a slug"), "slug", "slug")


def test_pool_duplicate_slug_is_refused(pool: Pool) -> None:
    _refused(Pool(name="Other", slug=pool.slug), "slug", "already exists")


def test_pool_zero_sessions_is_refused() -> None:
    _refused(Pool(name="P", slug="p", sessions_per_server=0), "sessions_per_server", "greater")


def test_server_http_url_must_be_http(pool: Pool) -> None:
    _refused(Server(pool=pool, name="a", transport="streamable_http", url="ftp://x/"), "url", "")


def test_server_http_without_url_is_refused(pool: Pool) -> None:
    _refused(Server(pool=pool, name="a", transport="streamable_http"), "url", "needs a URL")


def test_server_stdio_shell_string_is_refused(pool: Pool) -> None:
    server = Server(pool=pool, name="a", transport="stdio", command="python -m mcp_server_time")
    _refused(server, "command", "argument list")


def test_server_stdio_args_must_be_strings(pool: Pool) -> None:
    server = Server(pool=pool, name="a", transport="stdio", command="python", args=["-m", 3])
    _refused(server, "args", "list of strings")


def test_server_weight_out_of_range_is_refused(pool: Pool) -> None:
    server = Server(pool=pool, name="a", transport="stdio", command="python", weight=0)
    _refused(server, "weight", "greater than or equal to 1")


def test_server_priority_out_of_range_is_refused(pool: Pool) -> None:
    server = Server(pool=pool, name="a", transport="stdio", command="python", priority=10)
    _refused(server, "priority", "less than or equal to 9")


def test_server_bad_header_name_is_refused(pool: Pool) -> None:
    server = Server(
        pool=pool, name="a", transport="streamable_http", url="http://x/", headers={"a b": "c"}
    )
    _refused(server, "headers", "header names")


def test_server_duplicate_name_in_pool_is_refused(http_server: Server) -> None:
    server = Server(pool=http_server.pool, name="a", transport="stdio", command="python")
    _refused(server, "__all__", "already exists")


def test_rule_bad_regex_is_refused(pool: Pool) -> None:
    rule = AffinityRule(pool=pool, match_on="tool", match_type="regex", pattern="(", action="hash")
    _refused(rule, "pattern", "does not compile")


def test_rule_pin_without_server_is_refused(pool: Pool) -> None:
    _refused(AffinityRule(pool=pool, match_on="tool", action="pin"), "pin_server", "needs")


def test_rule_pin_to_other_pool_server_is_refused(pool: Pool) -> None:
    other = services.save(Pool(name="Other", slug="other"))
    server = services.save(Server(pool=other, name="x", transport="stdio", command="python"))
    rule = AffinityRule(pool=pool, match_on="tool", action="pin", pin_server=server)
    _refused(rule, "pin_server", "same pool")


def test_rule_header_match_needs_header_name(pool: Pool) -> None:
    _refused(AffinityRule(pool=pool, match_on="header", action="hash"), "header", "header name")


def test_rule_valid_pin_is_saved(rule: AffinityRule) -> None:
    assert AffinityRule.objects.filter(pk=rule.pk).exists()
    assert str(rule).endswith("→ a")
