"""The exposure configuration, and the constants and small helpers every stage shares."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from riskguard.operators.exposure.instruments import (
    InstrumentRegistry,
    InstrumentsConfig,
)
from riskguard.schemas import (
    FundingRate,
    IndexPrice,
    OptionQuote,
    Quote,
    Trade,
)

from riskguard.errors import ConfigError
from riskguard.validation import (
    Nanoseconds,
    NonNegative,
    PositiveFinite,
    PositiveInt,
    PositiveNanoseconds,
    Share,
    check_declared,
)

STATE_VERSION = 7
"""The version of the exposure states a snapshot holds; a snapshot of another is
refused."""


NS_PER_S = 1_000_000_000
SECONDS_PER_YEAR = 365.0 * 24 * 3600
FIRM_KEY = "firm"
_NS = uuid.UUID("8f0b7a52-1c6e-4f57-9d43-7e4f3c2a9b10")

MarkSource = Literal["trade", "quote", "index_price", "option_quote", "funding_rate"]


class ExposureConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Configuration of ``aggregate_exposure``.

    - ``max_mark_age_ns``: a mark older than this (vs the newest event time the
      counterparty has seen, or, ticked, the ticks' time) makes the exposure ``stale``.
    - ``recon_abs_tol`` / ``recon_rel_tol``: a position snapshot differing from
      the fill-accumulated position by more than ``abs + rel * |qty|`` is a
      ``reconciliation_break``.
    - ``concentration_basis``: what a counterparty's share is a share of.
    - ``concentration_epsilon``: other counterparties' concentration is
      re-emitted when it moves by more than this (absolute share), or crosses a
      level (warn, breach, hard, or one less its hysteresis) of the counterparty's
      configured concentration limit.
    - ``vol_alpha`` / ``vol_min_samples``: EWMA realized vol of marks (used
      when no feature-stream vol ``vol_feature`` is present).
    - ``valuation_shards``: how many stage-1 keys the instruments are hashed
      over (the unit of parallelism of re-valuation; each shard sends one
      part per touched counterparty per batch, so a few is enough).
    - ``position_revalue_ns`` (ticked mode only): a counterparty whose positions,
      balances or open orders changed (a fill, position snapshot, balance or orders
      record) is re-valued at the next multiple of this in event time, as soon as its
      shard sees any record or tick at or past it, instead of waiting for the next
      tick; price moves still re-value once per tick. A breach caused by a fill then
      reaches the limits within milliseconds, and still falls on the same event time
      however the input was batched. ``0``: wait for the tick.
    - ``reorder_slack_ns`` (ticked mode, several tick sources: one per guard worker): a
      record more than this ahead of the sources' watermark waits in the shard until the
      watermark comes that close. A backlog replayed through several processes, where
      one runs minutes of event time ahead of the other, is then applied in the order
      one worker applies it: a fill is not valued against marks the slower process has
      not sent yet, nor marks against a future the watermark has not reached. Live, the
      workers are within a tick of each other and nothing waits. Keep it at least two
      tick intervals; ``0``: never wait. ``max_hold_ns`` (live runs, wall time) bounds
      the wait of a fill, snapshot, balance or orders record: a guard whose slower
      source lags still sees a breach within seconds.
    - ``pegs``: asset -> peg price in the reporting currency (e.g. ``{"USDC": 1.0}``).
      When an asset's FX index leaves its peg by ``peg_warn_bps`` a ``depeg``
      alert (warn) opens on ``underlying:<asset>``; past ``peg_critical_bps`` it
      turns critical; back within half of ``peg_warn_bps`` a ``peg_restored``
      closes it (each level is left only ``peg_warn_bps / 2`` below it). Every
      USDC-quoted mark and USDC balance moves with the rate, so a slow slide the
      anomaly detector adapts to is still caught here.
    """

    instruments: InstrumentsConfig = InstrumentsConfig()
    max_mark_age_ns: PositiveNanoseconds = 30 * NS_PER_S
    recon_abs_tol: NonNegative = 1e-9
    recon_rel_tol: NonNegative = 1e-6
    # what a counterparty's concentration is its share of, over all counterparties: its
    # gross notional, its collateral, or the two added
    concentration_basis: Literal["gross_notional", "collateral", "gross_plus_collateral"] = (
        "gross_plus_collateral"
    )
    concentration_epsilon: NonNegative = 0.005
    vol_alpha: Share = 0.05
    vol_min_samples: PositiveInt = 20
    # the feature vector value that gives an instrument's realized volatility (for volatility-scaled
    # limits)
    vol_feature: str = "realized_vol"
    # the market records that mark positions (and give FX rates)
    mark_sources: tuple[MarkSource, ...] = (
        "trade", "quote", "index_price", "option_quote", "funding_rate",
    )
    max_evidence: PositiveInt = 8  # record ids an exposure carries as its evidence, at most
    dedup_window: PositiveInt = 4096
    valuation_shards: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 1
    # a fill, position, balance or open-orders record re-values its counterparty at the next
    # multiple of this much event time; 0: at the next tick only
    position_revalue_ns: Nanoseconds = 10_000_000
    # fills, snapshots, balances and orders are held this much event time to be applied in
    # event-time order; 0: never hold them back
    reorder_slack_ns: Nanoseconds = 2 * NS_PER_S
    max_hold_ns: PositiveNanoseconds = 5 * NS_PER_S
    pegs: dict[str, PositiveFinite] = {}
    # a pegged asset this far off its peg (bps): a depeg alert, warn ...
    peg_warn_bps: PositiveFinite = 50.0
    # ... this far off its peg (bps): a critical depeg alert
    peg_critical_bps: PositiveFinite = 200.0

    def validate(self, path: str = "exposure") -> InstrumentRegistry:
        """Check every value; return the registry built from ``instruments``."""
        check_declared(self, path)
        if not self.peg_warn_bps <= self.peg_critical_bps:
            raise ConfigError(f"{path}.peg_warn_bps", "must not exceed peg_critical_bps "
                              f"({self.peg_critical_bps})", self.peg_warn_bps)
        return InstrumentRegistry(self.instruments, path=f"{path}.instruments")


def price_of(ev: Any) -> float | None:
    t = type(ev)
    if t is Trade or t is IndexPrice:
        return ev.price
    if t is Quote:
        return ev.mid
    if t is OptionQuote or t is FundingRate:
        return ev.mark_price
    return None



def alert_id(*parts: object) -> str:
    return str(uuid.uuid5(_NS, "|".join(str(p) for p in parts)))


def evidence_add(buf: list[str], rid: str, cap: int) -> None:
    if rid in buf:
        return
    buf.append(rid)
    if len(buf) > cap:
        del buf[0]
