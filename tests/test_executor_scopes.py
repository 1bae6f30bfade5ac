"""The executors' engine-neutral scope book and market map, and the executors'
docstring examples."""

from __future__ import annotations

import copy
import doctest
import importlib
from pathlib import Path

import pytest

pytest.importorskip("nautilus_trader", reason="the executors' market map needs riskguard[nautilus]")

from executor_cases import MARKETS, venue
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.objects import Money
from riskguard.executors import MarketMap, ScopeBook, TradeState
from riskguard.executors.scopes import MAX_NOTIONAL
from riskguard.schemas.signals import FIRM, Scope, ScopeKind

from riskguard.errors import ConfigError


def test_resuming_the_stricter_of_two_cuts_leaves_the_other_in_force() -> None:
    """Two commands cut okx's limits, to 0.5 and then to 0.3: the strictest applies, and a
    resume naming the 0.3 leaves the 0.5 (and one naming neither lifts nothing)."""
    okx = MarketMap.from_dict(MARKETS).market("BTCUSDT.OKX")
    book = ScopeBook()
    book.hold("reduce_limits", venue("okx"), "cmd-a", issuer="desk", factor=0.5)
    assert book.at_least_as_strict("reduce_limits", venue("okx"), factor=0.3) is None
    book.hold("reduce_limits", venue("okx"), "cmd-b", issuer="desk", factor=0.3)
    assert book.factor_for(okx)[0] == 0.3
    assert book.lift(venue("okx"), command_ids=["cmd-c"]) == []
    assert [h.command_id for h in book.lift(venue("okx"), command_ids=["cmd-b"])] == ["cmd-b"]
    assert book.factor_for(okx)[0] == 0.5


def test_the_scope_book_snapshot_is_independent_and_restores_the_same_states() -> None:
    markets = MarketMap.from_dict(MARKETS)
    okx = markets.market("BTCUSDT.OKX")
    book = ScopeBook()
    book.hold("reduce_only", venue("okx"), "c1", issuer="desk")
    snap = book.snapshot()
    book.hold("halt_trading", FIRM, "c2", issuer="desk")
    restored = ScopeBook.restore(snap)
    assert (book.state_for(okx), restored.state_for(okx)) == (TradeState.HALTED,
                                                             TradeState.REDUCING)
    assert [h.command_id for h in restored.lift(venue("okx"))] == ["c1"]
    assert restored.state_for(okx) is TradeState.ACTIVE


@pytest.mark.parametrize("cap", [float("nan"), float("inf"), 1e20, 0.0, -1.0])
def test_a_market_map_refuses_a_max_notional_nautilus_cannot_hold(cap: float) -> None:
    """nan and inf passed the old check (cap <= 0 is False for both): reduce_limits then
    capped nothing and still acknowledged APPLIED; a cap above Nautilus's MONEY_MAX
    could not be set at all. Each is refused naming the key."""
    markets = copy.deepcopy(MARKETS)
    markets["instruments"][0]["max_notional"] = cap
    with pytest.raises(ConfigError, match=r"instruments\[0\]\.max_notional: must be a "):
        MarketMap.from_dict(markets)


def test_the_largest_max_notional_is_money_nautilus_takes() -> None:
    """MAX_NOTIONAL is within this build's MONEY_MAX, and a cap of it loads."""
    from nautilus_trader.model.objects import MONEY_MAX

    assert MAX_NOTIONAL <= MONEY_MAX
    Money(MAX_NOTIONAL, USDT)
    markets = copy.deepcopy(MARKETS)
    markets["instruments"][0]["max_notional"] = MAX_NOTIONAL
    assert MarketMap.from_dict(markets).markets[0].max_notional == MAX_NOTIONAL


def test_an_unlisted_instrument_on_a_listed_venue_follows_the_venue_only() -> None:
    markets = MarketMap.from_dict(MARKETS)
    other = markets.market("SOLUSDT.OKX", system_venue="OKX")
    book = ScopeBook()
    book.hold("halt_trading", venue("okx"), "c1", issuer="desk")
    book.hold("halt_trading", Scope(kind=ScopeKind.UNDERLYING, value="SOL"), "c2",
              issuer="desk")
    assert (other.venue, other.counterparty, book.governing(other)[0].command_id) == (
        "okx", "okx", "c1")
    assert markets.market("X.KRAKEN", system_venue="KRAKEN").venue is None


@pytest.mark.parametrize("name", ["riskguard.executors", "riskguard.executors.scopes",
                                  "riskguard.executors.nautilus",
                                  "riskguard.executors.nautilus.executor",
                                  "riskguard.executors.nautilus.gate"])
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_the_holds_file_keeps_the_holds_and_only_the_newest_commands(tmp_path: Path) -> None:
    """A save writes every hold and the newest MAX_SAVED remembered commands, so its cost
    does not grow with the commands applied; what it kept is recalled after a load."""
    book = ScopeBook()
    book.hold("halt_trading", venue("okx"), "h1", issuer="desk")
    for n in range(ScopeBook.MAX_REMEMBERED):
        book.remember("engine-1", f"c{n}", {"change": "none"})
    path = tmp_path / "holds.json"
    book.save(path)
    back = ScopeBook.load(path)
    assert [h.command_id for h in back.holds()] == ["h1"]
    assert len(back.state.applied) == ScopeBook.MAX_SAVED
    last = ScopeBook.MAX_REMEMBERED - 1
    assert back.recall("engine-1", f"c{last}") == {"change": "none"}
    assert back.recall("engine-1", "c0") is None


def _saved_halt(path: Path, **issuer: str) -> Path:
    """A holds file with one halt on venue okx, its issuer as given (none: left out)."""
    import json

    hold = {"action": "halt_trading", "scope_label": "venue:okx",
            "scope": {"kind": "venue", "value": "okx"}, "command_id": "h1", "state": 2,
            **issuer}
    path.write_text(json.dumps({"holds": [hold], "applied": {}, "version": 1}))
    return path


@pytest.mark.parametrize("issuer", [{}, {"issuer": ""}], ids=["left-out", "empty"])
def test_a_holds_file_with_a_hold_naming_no_issuer_stops_the_load(
    tmp_path: Path, issuer: dict[str, str],
) -> None:
    """A hold must name who signed it: one that does not would answer any signer's
    repeat of its cut. Such a file (0.1's) is refused at load, naming the hold."""
    path = _saved_halt(tmp_path / "holds.json", **issuer)
    with pytest.raises(ConfigError, match="issuer"):
        ScopeBook.load(path)


def test_a_holds_file_naming_its_issuers_loads(tmp_path: Path) -> None:
    """The file a save writes loads back with each hold's issuer."""
    book = ScopeBook()
    book.hold("halt_trading", venue("okx"), "h1", issuer="engine-1")
    book.save(tmp_path / "holds.json")
    back = ScopeBook.load(tmp_path / "holds.json")
    assert [h.issuer for h in back.holds()] == ["engine-1"]


def test_a_hold_names_who_signed_it() -> None:
    """Every hold carries its issuer: a hold naming none is refused."""
    with pytest.raises(ValueError, match="issuer"):
        ScopeBook().hold("halt_trading", venue("okx"), "h1", issuer="")


@pytest.mark.parametrize("version", [None, 0, 2])
def test_a_holds_file_of_another_version_stops_the_load(
    tmp_path: Path, version: int | None,
) -> None:
    """A holds file states its version (1); one stating none or another is refused."""
    import json

    path = _saved_halt(tmp_path / "holds.json", issuer="engine-1")
    doc = json.loads(path.read_text())
    if version is None:
        del doc["version"]
    else:
        doc["version"] = version
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="version"):
        ScopeBook.load(path)


def test_the_holds_of_one_signer_never_use_up_another_s_room_on_a_scope() -> None:
    """64 cuts by one signer fill that signer's room on a scope, not the guard's: the
    guard's replicas (its party) still hold a stricter one there; past its own 64, a
    signer's next is an OverflowError."""
    book, okx = ScopeBook(), venue("okx")
    limit = ScopeBook.MAX_HOLDS_PER_ACTION
    for i in range(limit):
        book.hold("reduce_limits", okx, f"op-{i}", issuer="desk", factor=0.99 - i / 1000)
    with pytest.raises(OverflowError):
        book.hold("reduce_limits", okx, "op-extra", issuer="desk", factor=0.5)
    guard = frozenset({"engine-a", "engine-b"})
    book.hold("reduce_limits", okx, "g-1", issuer="engine-a", factor=0.1, party=guard)
    assert min(h.factor or 1.0 for h in book.on(okx.label(), "reduce_limits")) == 0.1


def test_another_signer_holding_under_the_same_command_id_holds_beside_never_over() -> None:
    """Ids are each signer's own: a mild cut signed under the guard's command id is held
    beside the guard's stricter cut, which stays in force."""
    book, okx = ScopeBook(), venue("okx")
    book.hold("reduce_limits", okx, "g-1", issuer="engine-a", factor=0.1)
    book.hold("reduce_limits", okx, "g-1", issuer="desk", factor=0.99)
    assert sorted((h.issuer, h.factor) for h in book.holds()) == [
        ("desk", 0.99), ("engine-a", 0.1)]
    assert [h.issuer for h in book.lift(okx, command_ids=["g-1"])] == ["engine-a", "desk"]
