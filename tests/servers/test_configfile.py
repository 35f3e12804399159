"""Config as code: `mcppool apply` and `mcppool export` as an operator's CI job runs them."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from servers import configfile, services
from servers.models import AffinityRule, Pool, Server


def _three_pools() -> dict[str, Any]:
    """3 pools × 3 servers, both transports, rules of both actions; some knobs off default."""
    pools = []
    for n, slug in enumerate(["alpha", "beta", "gamma"]):
        servers = [
            {
                "name": f"{slug}-http",
                "transport": "streamable_http",
                "url": f"http://127.0.0.1:{9100 + n}/mcp",
                "headers": {"X-Team": slug},
                "weight": 3,
                "priority": 1,
            },
            {
                "name": f"{slug}-stdio",
                "transport": "stdio",
                "command": "python",
                "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
                "env": {"TZ": "UTC"},
                "state": "draining",
            },
            {
                "name": f"{slug}-backup",
                "transport": "streamable_http",
                "url": f"http://127.0.0.1:{9200 + n}/mcp",
                "priority": 9,
                "max_in_flight": 50,
                "era": "handshake",
            },
        ]
        rules = [
            {
                "order": 10,
                "match_on": "header",
                "header": "X-Tenant",
                "match_type": "regex",
                "pattern": "^acme-[0-9]+$",
                "action": "pin",
                "pin_server": f"{slug}-stdio",
                "description": "acme runs on the stdio replica",
            },
            {"order": 20, "match_on": "api_key", "action": "hash", "enabled": False},
        ]
        pools.append(
            {
                "slug": slug,
                "name": slug.title(),
                "description": f"The {slug} pool.\nSecond line.",
                "strategy": "health_based",
                "session_mode": "sticky" if n == 1 else "shared",
                "sessions_per_server": 4,
                "check_interval": 10,
                "ejection_cap": 600.0,
                "servers": servers,
                "affinity_rules": rules,
            }
        )
    return {"pools": pools}


def _write(tmp_path: Path, data: dict[str, Any] | str, name: str = "pools.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command("mcppool", *args, stdout=out)
    return out.getvalue()


def _counts() -> tuple[int, int, int]:
    return Pool.objects.count(), Server.objects.count(), AffinityRule.objects.count()


@pytest.mark.django_db
def test_apply_then_export_round_trips_every_field(tmp_path: Path) -> None:
    # given a file of 3 pools × 3 servers with rules
    source = _three_pools()
    # when it is applied and the config exported
    _run("apply", str(_write(tmp_path, source)))
    exported = yaml.safe_load(_run("export"))
    # then the export says what the file said, with the defaults filled in
    assert [p["slug"] for p in exported["pools"]] == ["alpha", "beta", "gamma"]
    for given, got in zip(source["pools"], exported["pools"], strict=True):
        for key, value in given.items():
            if key not in configfile.POOL_CHILDREN:
                assert got[key] == value, key
        assert list(got) == [*configfile.POOL_FIELDS, *configfile.POOL_CHILDREN]
        # servers sorted by priority, then name
        assert [s["name"] for s in got["servers"]] == [
            f"{given['slug']}-stdio",
            f"{given['slug']}-http",
            f"{given['slug']}-backup",
        ]
        by_name = {s["name"]: s for s in got["servers"]}
        for server in given["servers"]:
            assert list(by_name[server["name"]]) == list(configfile.SERVER_FIELDS)
            assert by_name[server["name"]] | server == by_name[server["name"]]
        for rule, exported_rule in zip(given["affinity_rules"], got["affinity_rules"], strict=True):
            assert exported_rule | rule == exported_rule
        assert got["sessions_per_server"] == 4
        assert got["calls_per_session"] == 32


@pytest.mark.django_db
def test_apply_exported_file_changes_nothing(tmp_path: Path) -> None:
    # given a config applied, then exported to a file
    _run("apply", str(_write(tmp_path, _three_pools())))
    exported = tmp_path / "exported.yaml"
    _run("export", "--output", str(exported))
    version = services.config_version()
    # when the export is applied
    output = _run("apply", str(exported))
    # then nothing changes
    assert output.strip() == "no changes"
    assert services.config_version() == version


@pytest.mark.django_db
def test_apply_same_file_twice_second_is_no_change(tmp_path: Path) -> None:
    path = _write(tmp_path, _three_pools())
    first = _run("apply", str(path))
    version = services.config_version()
    second = _run("apply", str(path))
    assert "applied 18 changes" in first  # 3 pools, 9 servers, 6 rules
    assert second.strip() == "no changes"
    assert services.config_version() == version


@pytest.mark.django_db
def test_apply_whole_file_bumps_version_once(tmp_path: Path) -> None:
    before = services.config_version()
    _run("apply", str(_write(tmp_path, _three_pools())))
    assert services.config_version() == before + 1
    assert _counts() == (3, 9, 6)


@pytest.mark.django_db
def test_apply_dry_run_prints_diff_and_writes_nothing(tmp_path: Path) -> None:
    # given the config applied
    source = _three_pools()
    _run("apply", str(_write(tmp_path, source)))
    version = services.config_version()
    # when a file that changes a weight, drops a rule and adds a server is dry-run with --prune
    changed = copy.deepcopy(source)
    changed["pools"][0]["servers"][0]["weight"] = 7
    changed["pools"][0]["affinity_rules"].pop()
    changed["pools"][2]["servers"].append(
        {"name": "gamma-new", "transport": "stdio", "command": "python"}
    )
    output = _run("apply", str(_write(tmp_path, changed, "new.yaml")), "--dry-run", "--prune")
    # then it shows each change and writes none of them
    assert "~ server alpha/alpha-http: weight 3 → 7" in output
    assert "- rule alpha#20" in output
    assert "+ server gamma/gamma-new: name='gamma-new', transport='stdio'" in output
    assert "3 changes (dry run: nothing written)" in output
    assert services.config_version() == version
    assert Server.objects.get(name="alpha-http").weight == 3
    assert not Server.objects.filter(name="gamma-new").exists()
    assert AffinityRule.objects.filter(pool__slug="alpha", order=20).exists()


@pytest.mark.django_db
def test_apply_without_prune_keeps_objects_the_file_omits(tmp_path: Path) -> None:
    _run("apply", str(_write(tmp_path, _three_pools())))
    smaller = _three_pools()
    smaller["pools"] = smaller["pools"][:1]
    smaller["pools"][0]["servers"] = smaller["pools"][0]["servers"][:1]
    smaller["pools"][0]["affinity_rules"] = []
    assert _run("apply", str(_write(tmp_path, smaller, "small.yaml"))).strip() == "no changes"
    assert _counts() == (3, 9, 6)


@pytest.mark.django_db
def test_apply_prune_deletes_objects_the_file_omits(tmp_path: Path) -> None:
    # given the config applied
    _run("apply", str(_write(tmp_path, _three_pools())))
    version = services.config_version()
    # when a file naming one pool, two of its servers and one rule is applied with --prune
    smaller = _three_pools()
    smaller["pools"] = smaller["pools"][:1]
    smaller["pools"][0]["servers"] = smaller["pools"][0]["servers"][:2]
    smaller["pools"][0]["affinity_rules"] = smaller["pools"][0]["affinity_rules"][:1]
    output = _run("apply", str(_write(tmp_path, smaller, "small.yaml")), "--prune")
    # then everything else is gone, in one config change
    assert "- pool beta (with 3 servers, 2 rules)" in output
    assert "- server alpha/alpha-backup" in output
    assert _counts() == (1, 2, 1)
    assert services.config_version() == version + 1


@pytest.mark.django_db
def test_apply_prune_refuses_rule_pinned_to_a_server_it_would_delete(tmp_path: Path) -> None:
    _run("apply", str(_write(tmp_path, _three_pools())))
    version = services.config_version()
    # the rule still pins alpha-stdio, which the file no longer names
    smaller = _three_pools()
    smaller["pools"][0]["servers"] = smaller["pools"][0]["servers"][:1]
    path = _write(tmp_path, smaller, "small.yaml")
    with pytest.raises(CommandError) as info:
        _run("apply", str(path), "--prune")
    assert "pools[0].affinity_rules[0].pin_server: no server named 'alpha-stdio'" in str(info.value)
    assert services.config_version() == version
    assert _counts() == (3, 9, 6)


@pytest.mark.django_db
def test_apply_rule_can_move_its_pin_to_another_server(tmp_path: Path) -> None:
    source = _three_pools()
    _run("apply", str(_write(tmp_path, source)))
    source["pools"][0]["affinity_rules"][0]["pin_server"] = "alpha-backup"
    output = _run("apply", str(_write(tmp_path, source, "moved.yaml")))
    assert "~ rule alpha#10: pin_server 'alpha-stdio' → 'alpha-backup'" in output
    rule = AffinityRule.objects.get(pool__slug="alpha", order=10)
    assert rule.pin_server is not None
    assert rule.pin_server.name == "alpha-backup"


_GOOD = """\
pools:
  - slug: time
    name: Time
    servers:
      - name: a
        transport: streamable_http
        url: http://127.0.0.1:9/mcp
      - name: b
        transport: stdio
        command: python
        weight: 10
    affinity_rules:
      - order: 0
        match_on: tool
        match_type: regex
        pattern: "^get_"
        action: pin
        pin_server: b
"""


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "weight: 10",
            "weight: 1001",
            ":11: pools[0].servers[1].weight: Ensure this value is less",
        ),
        ("weight: 10", "wieght: 10", ":11: pools[0].servers[1].wieght: unknown key; did you mean"),
        ('"^get_"', '"(get"', ":16: pools[0].affinity_rules[0].pattern: The regular expression"),
        ("pin_server: b", "pin_server: c", ":18: pools[0].affinity_rules[0].pin_server: no server"),
        ("url: http", "url: [http", ":8: invalid YAML: "),
        ("weight: 10", "weight: ten", ":11: pools[0].servers[1].weight: must be a whole number"),
        ("- name: b", "- name: a", ":8: pools[0].servers[1].name: 'a' is already used on line 5"),
    ],
    ids=["bad-weight", "unknown-key", "bad-regex", "pin-unknown", "yaml-syntax", "type", "dup"],
)
def test_apply_invalid_file_reports_line_and_changes_nothing(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    # given an empty config and a file with one mistake
    path = _write(tmp_path, _GOOD.replace(old, new, 1))
    version = services.config_version()
    # when it is applied
    with pytest.raises(CommandError) as info:
        _run("apply", str(path))
    # then the first line of the error names the file, the line and the field
    assert str(info.value).splitlines()[0].startswith(f"{path}{expected}"), str(info.value)
    assert services.config_version() == version
    assert _counts() == (0, 0, 0)


@pytest.mark.django_db
def test_apply_invalid_change_to_existing_config_keeps_it(tmp_path: Path) -> None:
    # given a valid config applied
    _run("apply", str(_write(tmp_path, _GOOD)))
    version = services.config_version()
    # when a file with a valid change and an invalid one is applied
    bad = _GOOD.replace("weight: 10", "weight: 20").replace('"^get_"', '"(get"')
    with pytest.raises(CommandError):
        _run("apply", str(_write(tmp_path, bad, "bad.yaml")))
    # then neither change was made
    assert Server.objects.get(name="b").weight == 10
    assert AffinityRule.objects.get().pattern == "^get_"
    assert services.config_version() == version


@pytest.mark.django_db
def test_apply_reports_every_problem_in_file_order(tmp_path: Path) -> None:
    bad = _GOOD.replace("weight: 10", "weight: 0").replace("name: Time", "name: Time\n    fal: 3")
    with pytest.raises(CommandError) as info:
        _run("apply", str(_write(tmp_path, bad)))
    lines = str(info.value).splitlines()
    assert [line.split(": ")[0].rsplit(":", 1)[1] for line in lines] == ["4", "12"]
    assert "did you mean 'fall'?" in lines[0]


@pytest.mark.django_db
def test_apply_check_timeout_over_interval_is_reported_on_the_pool(tmp_path: Path) -> None:
    text = "pools:\n  - slug: p\n    name: P\n    check_interval: 1\n    check_timeout: 2\n"
    with pytest.raises(CommandError) as info:
        _run("apply", str(_write(tmp_path, text)))
    assert ":5: pools[0].check_timeout: The check timeout must be shorter" in str(info.value)


@pytest.mark.django_db
def test_apply_pool_name_taken_by_another_pool_is_refused(tmp_path: Path) -> None:
    services.save(Pool(name="Time", slug="old"))
    with pytest.raises(CommandError) as info:
        _run("apply", str(_write(tmp_path, _GOOD)))
    assert ":3: pools[0].name: Pool with this Name already exists." in str(info.value)
    assert _counts() == (1, 0, 0)


@pytest.mark.django_db
def test_apply_leaves_recorded_health_alone(tmp_path: Path) -> None:
    _run("apply", str(_write(tmp_path, _GOOD)))
    Server.objects.filter(name="a").update(health="up", tools_count=3)
    _run("apply", str(_write(tmp_path, _GOOD.replace("weight: 10", "weight: 5"))))
    server = Server.objects.get(name="a")
    assert (server.health, server.tools_count) == ("up", 3)


@pytest.mark.django_db
def test_export_leaves_out_api_keys_and_recorded_fields(pool: Pool) -> None:
    key, _secret = services.create_api_key("billing-app", pools=[pool])
    text = _run("export")
    assert "billing-app" not in text
    assert key.prefix not in text
    assert key.hashed_secret not in text
    assert "health" not in text
    assert "tools_count" not in text
    assert yaml.safe_load(text)["pools"][0]["slug"] == pool.slug


def test_load_duplicate_key_is_refused() -> None:
    with pytest.raises(configfile.ConfigFileError) as info:
        configfile.load("pools:\n  - slug: a\n    slug: b\n", "f.yaml")
    assert str(info.value) == "f.yaml:3: pools[0].slug: duplicate key"


def test_load_cyclic_alias_is_refused() -> None:
    with pytest.raises(configfile.ConfigFileError) as info:
        configfile.load("pools: &loop [*loop]\n", "f.yaml")
    assert "nested too deeply" in str(info.value)


def test_pool_fields_name_every_operator_field() -> None:
    # A knob added to Pool must be added to the file format too, or export would lose it.
    model_fields = {f.name for f in Pool._meta.concrete_fields} - {"id", "created_at", "updated_at"}
    assert model_fields == set(configfile.POOL_FIELDS)


@pytest.mark.django_db
def test_example_file_applies_a_time_pool_of_two_stdio_replicas() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "pools.yaml"
    _run("apply", str(example))
    pool = Pool.objects.get(slug="time")
    assert (pool.strategy, pool.session_mode) == ("health_based", "shared")
    servers = list(pool.servers.all())
    assert [s.transport for s in servers] == ["stdio", "stdio"]
    assert all(s.args[:2] == ["-m", "mcp_server_time"] for s in servers)
    assert _run("apply", str(example)).strip() == "no changes"


@pytest.mark.django_db
def test_apply_server_that_is_not_a_mapping_is_one_clear_problem(tmp_path: Path) -> None:
    text = "pools:\n  - slug: p\n    name: P\n    servers:\n      - just-a-name\n"
    with pytest.raises(CommandError) as info:
        _run("apply", str(_write(tmp_path, text)))
    assert (
        str(info.value)
        == f"{tmp_path / 'pools.yaml'}:5: pools[0].servers[0]: must be a mapping of fields"
    )
