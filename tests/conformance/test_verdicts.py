"""How the conformance test reads the suite's results and judges them, without running it: a
scenario's verdict comes from its checks.json, and the lists of expected failures are strict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conformance import suite
from tests.conformance.test_conformance import _gateway_problems

pytestmark = pytest.mark.conformance


def _write(directory: Path, scenario: str, statuses: list[str]) -> None:
    folder = directory / f"server-{scenario}-2026-12-02T04-42-22-364Z"
    folder.mkdir()
    checks = [{"id": f"check-{i}", "status": status, "errorMessage": f"broke {i}"}
              for i, status in enumerate(statuses)]  # fmt: skip
    (folder / "checks.json").write_text(json.dumps(checks))


def test_a_scenario_fails_when_one_of_its_checks_fails_and_not_for_warnings(
    tmp_path: Path,
) -> None:
    _write(tmp_path, "input-required-result-multi-round", ["SUCCESS", "WARNING", "SKIPPED"])
    _write(tmp_path, "http-header-validation", ["SUCCESS", "FAILURE", "SUCCESS"])

    scenarios = suite.read_results(tmp_path)

    assert set(scenarios) == {"input-required-result-multi-round", "http-header-validation"}
    assert scenarios["input-required-result-multi-round"].passed
    assert not scenarios["http-header-validation"].passed
    assert scenarios["http-header-validation"].failures == ("check-1: broke 1",)


def _run(label: str, passed: set[str], failed: set[str]) -> suite.Run:
    run = suite.Run(label, "http://127.0.0.1:1/mcp", "2026-07-28")
    for name in passed:
        run.scenarios[name] = suite.Scenario(name, 1)
    for name in failed:
        run.scenarios[name] = suite.Scenario(name, 1, (f"{name}-check: failed",))
    return run


def test_a_scenario_passing_directly_must_pass_through_unless_listed() -> None:
    direct = _run("direct", {"tools-list", "caching"}, {"tasks-lifecycle"})
    through = _run("shared", {"tools-list"}, {"caching", "tasks-lifecycle"})

    unlisted = _gateway_problems(direct, through, {})
    listed = _gateway_problems(direct, through, {"caching": "a known defect"})

    assert len(unlisted) == 1
    assert "caching" in unlisted[0]
    assert "fails through the gateway" in unlisted[0]
    assert listed == []


def test_a_listed_scenario_that_passes_or_does_not_pass_directly_is_a_stale_entry() -> None:
    direct = _run("direct", {"tools-list", "caching"}, {"tasks-lifecycle"})
    through = _run("sticky", {"tools-list", "caching"}, {"tasks-lifecycle"})

    problems = _gateway_problems(
        direct, through, {"caching": "fixed since", "tasks-lifecycle": "fails directly too"}
    )

    assert len(problems) == 2
    assert any("caching passes now: remove it" in problem for problem in problems)
    assert any("tasks-lifecycle is listed but does not pass directly" in p for p in problems)


def test_a_check_skipped_only_through_the_gateway_is_a_feature_it_did_not_pass_on() -> None:
    # the suite skips a check when the server does not offer what it checks (listen streams when
    # server/discover offers no change notifications): passing, but not as the server does
    direct = _run("direct", {"server-stateless"}, set())
    through = _run("shared", set(), set())
    through.scenarios["server-stateless"] = suite.Scenario(
        "server-stateless", 3, skipped=frozenset({"sep-2575-server-sends-subscription-ack"})
    )

    problems = _gateway_problems(direct, through, {})

    assert len(problems) == 1
    assert "skips through the gateway" in problems[0]
    assert "sep-2575-server-sends-subscription-ack" in problems[0]
    # skipped directly too: nothing the gateway held back
    direct.scenarios["server-stateless"] = through.scenarios["server-stateless"]
    assert _gateway_problems(direct, through, {}) == []
