"""One vocabulary per status: the engine's enums agree with the operator model's choices, and one
pool-status function serves the REST API and the dashboard."""

from __future__ import annotations

from enum import StrEnum

import pytest
from django.db.models import TextChoices

from balancing.engine import config
from balancing.engine.config import PoolStatus, pool_status
from servers import choices

PAIRS = [
    (choices.Strategy, config.Strategy),
    (choices.SessionMode, config.SessionMode),
    (choices.RetryPolicy, config.RetryPolicy),
    (choices.Transport, config.Transport),
    (choices.ServerState, config.AdminState),
    (choices.Health, config.Health),
    (choices.Era, config.Era),
    (choices.MatchOn, config.MatchOn),
    (choices.MatchType, config.MatchType),
    (choices.AffinityAction, config.AffinityAction),
]


@pytest.mark.parametrize(("model", "engine"), PAIRS, ids=[m.__name__ for m, _ in PAIRS])
def test_engine_enum_has_the_model_choices_values(
    model: type[TextChoices], engine: type[StrEnum]
) -> None:
    assert sorted(model.values) == sorted(e.value for e in engine)


def test_every_model_choice_set_has_an_engine_enum() -> None:
    model_sets = {
        obj
        for obj in vars(choices).values()
        if isinstance(obj, type) and issubclass(obj, TextChoices) and obj is not TextChoices
    }
    assert model_sets == {m for m, _ in PAIRS}


@pytest.mark.parametrize(
    ("available", "total", "status"),
    [
        (0, 0, PoolStatus.EMPTY),
        (3, 3, PoolStatus.UP),
        (2, 3, PoolStatus.DEGRADED),
        (0, 3, PoolStatus.DOWN),
    ],
)
def test_pool_status_from_available_servers(available: int, total: int, status: PoolStatus) -> None:
    assert pool_status(available, total) is status
