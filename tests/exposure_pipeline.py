"""All three exposure stages chained in memory: the logic the exposure dataflow runs,
one record at a time and without an engine, that the exposure tests compare against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from riskguard.operators.core.snapshot import persisted
from riskguard.operators.exposure.config import STATE_VERSION, ExposureConfig
from riskguard.operators.exposure.rollup import (
    CounterpartyLogic,
    CounterpartyState,
    FirmLogic,
    FirmState,
)
from riskguard.operators.exposure.routing import Router
from riskguard.operators.exposure.shard_state import ShardState
from riskguard.operators.exposure.shards import ShardLogic
from riskguard.schemas import (
    DeadLetter,
    Exposure,
    RiskAlert,
)


@dataclass
class PipelineOut:
    exposures: list[Exposure] = field(default_factory=list)
    alerts: list[RiskAlert] = field(default_factory=list)
    errs: list[DeadLetter] = field(default_factory=list)


@persisted("riskguard.exposure.pipeline")
@dataclass
class PipelineState:
    version: int = STATE_VERSION
    valuation: dict[str, ShardState] = field(default_factory=dict)
    counterparty: dict[str, CounterpartyState] = field(default_factory=dict)
    firm: FirmState | None = None


class LocalPipeline:
    """All three stages chained in memory, one record at a time."""

    def __init__(self, config: ExposureConfig, state: PipelineState | None = None) -> None:
        self.config = config
        self.reg = config.validate()
        self.router = Router(self.reg, config)
        st = state if state is not None else PipelineState()
        self.val = {k: ShardLogic(config, self.reg, s) for k, s in st.valuation.items()}
        self.cps = {k: CounterpartyLogic(config, s) for k, s in st.counterparty.items()}
        self.firm = FirmLogic(config, st.firm)

    def snapshot(self) -> PipelineState:
        return PipelineState(
            valuation={k: v.snapshot() for k, v in self.val.items()},
            counterparty={k: v.snapshot() for k, v in self.cps.items()},
            firm=self.firm.snapshot(),
        )

    def feed(self, ev: Any) -> PipelineOut:
        out = PipelineOut()
        routed = self.router.route(ev)
        if isinstance(routed, DeadLetter):
            out.errs.append(routed)
            return out
        exps: list[Exposure] = []
        for key, item in routed:
            logic = self.val.get(key)
            if logic is None:
                logic = self.val[key] = ShardLogic(self.config, self.reg)
            for x in logic.on_event(item):
                if isinstance(x, RiskAlert):
                    out.alerts.append(x)
                    continue
                cpl = self.cps.get(x.counterparty)
                if cpl is None:
                    cpl = self.cps[x.counterparty] = CounterpartyLogic(self.config)
                for y in cpl.on_event(x):
                    if isinstance(y, RiskAlert):
                        out.alerts.append(y)
                    else:
                        exps.append(y)
        for e in exps:
            out.exposures.extend(self.firm.on_event(e))
        return out

    def feed_all(self, events: Sequence[Any]) -> PipelineOut:
        total = PipelineOut()
        for ev in events:
            o = self.feed(ev)
            total.exposures.extend(o.exposures)
            total.alerts.extend(o.alerts)
            total.errs.extend(o.errs)
        return total

    def latest(self) -> dict[str, Exposure]:
        """The latest exposure per counterparty (with concentration) and ``"*"``."""
        out = {cp: msgspec.structs.replace(e, concentration=self.firm.state.shares.get(cp, 0.0))
               for cp, e in self.firm.state.latest.items()}
        if self.firm.state.firm is not None:
            out["*"] = self.firm.state.firm
        return out
