"""The zone-loss stress scenario: two replicas, one lost mid-cascade; every expected
command executes exactly once and no protection lapses."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from riskguard.dataflows.stress import (
    Scenario,
    ZoneLoss,
    load_scenario,
    run_scenario,
    scenario_path,
)
from riskguard.dataflows.zone_loss import executed_once, replica_checks
from riskguard.schemas import Action, Audience, MitigationCommand, Scope, ScopeKind

from riskguard.config import decode_section
from riskguard.errors import ConfigError


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return run_scenario(load_scenario(scenario_path("zone_loss")),
                        tmp_path_factory.mktemp("zone"))


def test_zone_loss_passes_with_every_decision_executed_once(outcome: Any) -> None:
    assert outcome.passed, [c.as_dict() for c in outcome.checks if c.result == "FAIL"]
    zl = outcome.report["stress"]["zone_loss"]
    assert zl["lost"] == "a" and zl["duplicates"] > 0 and zl["executed"] > 0
    ids = [c.decision_id for c in outcome.result.commands]
    assert len(ids) == len(set(ids))
    assert {c.replica for c in outcome.result.commands} == {"a", "b"}


def _cmd(replica: str, at: int, decision: str) -> MitigationCommand:
    return MitigationCommand(
        command_id=f"{replica}-{decision}", issuer=f"engine-{replica}", issued_at=at,
        expires_at=at + 10, audience=Audience(env="e", topic="t"), action=Action.REDUCE_ONLY,
        scope=Scope(kind=ScopeKind.VENUE, value="okx"), reason="r",
        decision_id=decision * 64, replica=replica)


def test_a_decision_executed_later_than_the_survivor_issued_it_fails() -> None:
    survivor = [_cmd("a", 5, "1")]
    late = [msgspec.structs.replace(survivor[0], issued_at=9)]
    checks = replica_checks(late, 0, survivor, ZoneLoss())
    assert [c.result for c in checks] == ["PASS", "FAIL"]
    assert "executed later" in checks[1].detail


def test_a_decision_of_the_survivor_never_executed_fails() -> None:
    checks = replica_checks([], 0, [_cmd("a", 5, "1")], ZoneLoss())
    assert checks[1].result == "FAIL" and "not executed" in checks[1].detail


def test_the_executor_keeps_the_first_copy_of_each_decision() -> None:
    done, dropped = executed_once([_cmd("b", 4, "1"), _cmd("a", 4, "1"), _cmd("a", 6, "2")])
    assert [(c.replica, c.issued_at) for c in done] == [("a", 4), ("a", 6)] and dropped == 1


@pytest.mark.parametrize(("table", "where"), [
    ({"replicas": ["a"]}, "zone_loss.replicas"),
    ({"lost": "c"}, "zone_loss.lost"),
    ({"lost_at_s": -1.0}, "zone_loss.lost_at_s"),
    ({"lots": 1}, "zone_loss.lots"),
])
def test_a_bad_zone_loss_table_names_its_key(table: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        decode_section({"name": "x", "zone_loss": table}, Scenario, "")
