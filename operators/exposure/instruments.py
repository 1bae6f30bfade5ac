"""The instrument registry and reporting-currency conversion.

Each instrument we may hold is declared once: its kind (``spot``, ``perp``,
``future``, ``option``), base and quote assets, underlying and contract
multiplier. Every asset other than the reporting currency is converted
through an index price named in ``fx_index`` (``{"USDC": "USDC-USD"}``), so a
stablecoin depeg moves every USDC-quoted mark. An instrument or asset that
is not declared is never valued at zero: callers dead-letter it.

>>> reg = InstrumentRegistry(InstrumentsConfig(
...     instruments={"BTC-USDC": InstrumentSpec(kind="spot", base="BTC", quote="USDC")},
...     fx_index={"USDC": "USDC-USD"}))
>>> reg.get("BTC-USDC").underlying_asset
'BTC'
>>> reg.fx_assets_of("USDC-USD")
('USDC',)
>>> reg.instruments_needing_fx("USDC")
('BTC-USDC',)
>>> reg.get("DOGE-USDC") is None
True
"""

from __future__ import annotations

from typing import Literal

import msgspec

from riskguard.errors import ConfigError
from riskguard.validation import PositiveFinite, check_declared

InstrumentKind = Literal["spot", "perp", "future", "option"]


class InstrumentSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One instrument.

    ``underlying`` defaults to ``base``. ``multiplier`` is the contract size in
    units of the underlying. ``underlying_quote`` is the currency an option
    quote's ``underlying_price`` is stated in (defaults to ``quote``).
    """

    kind: InstrumentKind = "spot"  # spot, perp (perpetual swap), future or option
    base: str  # the asset one unit of it is (BTC of BTC-USDT)
    # the currency its price is in (USDT of BTC-USDT; another asset than the reporting currency
    # needs its fx_index)
    quote: str
    underlying: str | None = None  # an option's or future's underlying asset (default: base)
    # contract size in units of the underlying (1.0: one unit per contract)
    multiplier: PositiveFinite = 1.0
    # the currency an option quote's underlying_price is in (default: quote)
    underlying_quote: str | None = None

    @property
    def underlying_asset(self) -> str:
        return self.underlying or self.base

    @property
    def underlying_ccy(self) -> str:
        return self.underlying_quote or self.quote


class InstrumentsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Registry config: instruments, the reporting currency and FX index names."""

    # every instrument the guard may hold (fills, positions, open orders): an undeclared one is a
    # dead letter (unknown_instrument)
    instruments: dict[str, InstrumentSpec] = {}
    reporting_currency: str = "USD"  # the currency exposures and limits are counted in
    # asset -> the instrument whose price values it in the reporting currency: needed for every
    # asset an instrument is quoted in other than that currency (a USDT-quoted instrument, as in
    # every Binance spot or USDT-M file, needs USDT's). The rate is the price of any market record
    # of that instrument in the input (an index price, a trade or a quote: mark_sources); until one
    # arrives, exposure in the asset is unvalued (an alert, then a breach after the limit's
    # unvalued_grace_ns), never zero
    fx_index: dict[str, str] = {}


class InstrumentRegistry:
    """Validated lookups over an :class:`InstrumentsConfig`."""

    def __init__(self, config: InstrumentsConfig, *, path: str = "instruments") -> None:
        self.config = config
        self.reporting = config.reporting_currency
        check_declared(config, path)
        for name, spec in config.instruments.items():
            for ccy in {spec.quote, spec.underlying_ccy}:
                if ccy != self.reporting and ccy not in config.fx_index:
                    where = f"{path}.fx_index.{ccy}"
                    raise ConfigError(
                        where,
                        f"an index instrument converting {ccy} to {self.reporting} "
                        f"(needed by instrument {name!r}), e.g. fx_index = {{ {ccy} = "
                        f'"{ccy}-{self.reporting}" }} in [exposure.instruments], where '
                        f"{ccy}-{self.reporting} is an instrument whose prices in the input "
                        f"value {ccy} in {self.reporting} (docs/configuration.md)",
                    )
        self._fx_by_index: dict[str, tuple[str, ...]] = {}
        for asset, index in config.fx_index.items():
            self._fx_by_index[index] = (*self._fx_by_index.get(index, ()), asset)
        needing: dict[str, list[str]] = {}
        for name, spec in config.instruments.items():
            for ccy in sorted({spec.quote, spec.underlying_ccy}):
                if ccy != self.reporting:
                    needing.setdefault(ccy, []).append(name)
        self._needing = {k: tuple(v) for k, v in needing.items()}

    def get(self, instrument: str) -> InstrumentSpec | None:
        """The spec of ``instrument``, or ``None`` if it is not declared."""
        return self.config.instruments.get(instrument)

    def fx_assets_of(self, index_instrument: str) -> tuple[str, ...]:
        """The assets whose reporting-currency rate is the price of ``index_instrument``."""
        return self._fx_by_index.get(index_instrument, ())

    def instruments_needing_fx(self, asset: str) -> tuple[str, ...]:
        """Instruments whose quote (or option underlying) currency is ``asset``."""
        return self._needing.get(asset, ())

    def convertible(self, asset: str) -> bool:
        """Whether ``asset`` can be converted to the reporting currency at all."""
        return asset == self.reporting or asset in self.config.fx_index
