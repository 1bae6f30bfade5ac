"""A file-driven exposure + limits dataflow for the multi-worker and multi-process tests.

``RISK_FLOW_IN`` names a JSON-lines file of records; every worker writes its
outputs to ``$RISK_FLOW_OUT/out-<worker>.pkl`` (a sequence of pickles).
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource
from riskguard.operators.exposure.limit_specs import (
    CounterpartyLimits,
    LimitsConfig,
    LimitSpec,
    VolScaling,
)
from riskguard.operators.exposure.ops import aggregate_exposure, enforce_limits
from riskguard.schemas import Balance, Codec, LimitUpdate, Quote, SignedEnvelope, Trade
from test_exposure import fill, idx, oq, worked_config, worked_events

from riskguard.errors import VerificationError

S = 1_000_000_000


def refuse_updates(envelope: SignedEnvelope, now_ns: int) -> LimitUpdate:
    """This flow has no update stream; a verifier that accepts nothing."""
    raise VerificationError("unsigned", "no trust file in this flow")
CPS = ("binance", "okx", "deribit", "bybit", "kraken")
LINEAR = ("BTC-USDC", "BTC-PERP", "ETH-PERP")
OPTIONS = (("BTC-27JUN-60000-C", "BTC", 60_000.0, 0.05, 0.5, "call"),
           ("ETH-27JUN-3000-P", "ETH", 3_000.0, 0.02, -0.3, "put"))


def limits_config() -> LimitsConfig:
    vs = VolScaling(underlying="BTC", ref_vol=0.5, lo=0.25, hi=1.0)
    per = CounterpartyLimits(limits={
        "gross_notional": LimitSpec(limit=400_000.0, vol_scaling=vs),
        "collateral": LimitSpec(limit=100_000.0),
        "concentration": LimitSpec(limit=0.5),
    })
    return LimitsConfig(
        firm={"gross_notional": LimitSpec(limit=2_000_000.0)},
        counterparties={cp: per for cp in CPS if cp != "kraken"},
    )


def make_events(n: int, seed: int = 7) -> list[Any]:
    """The worked example followed by ``n`` random fills, marks, balances and FX ticks."""
    rng = random.Random(seed)
    evs: list[Any] = list(worked_events())
    t = 1_000 * S + 100
    px = {"BTC-USDC": 60_000.0, "BTC-PERP": 60_000.0, "ETH-PERP": 3_000.0}
    for k in range(n):
        t += rng.randint(1, 1000) * 1_000_000
        r = rng.random()
        inst = rng.choice(LINEAR)
        if r < 0.55:
            px[inst] *= 1 + rng.gauss(0, 0.001)
            if inst == "BTC-USDC":
                evs.append(Quote(id=f"q{k}", venue="binance", instrument=inst, ts=t,
                                 bid=px[inst] - 1, bid_size=1.0, ask=px[inst] + 1, ask_size=1.0))
            else:
                evs.append(Trade(id=f"t{k}", venue="okx", instrument=inst, ts=t,
                                 price=px[inst], qty=1.0, side="buy"))
        elif r < 0.62:
            name, und, upx, mark, delta, kind = rng.choice(OPTIONS)
            evs.append(oq(f"o{k}", name, und, t, mark * (1 + rng.gauss(0, 0.01)), delta,
                          upx, kind))
        elif r < 0.9:
            cp = rng.choice(CPS)
            if rng.random() < 0.2:
                name = rng.choice(OPTIONS)[0]
                evs.append(fill(f"f{k}", cp, name, rng.choice(["buy", "sell"]),
                                rng.randint(1, 5), 0.03, t))
            else:
                evs.append(fill(f"f{k}", cp, inst, rng.choice(["buy", "sell"]),
                                round(rng.uniform(0.1, 2.0), 3), px[inst], t))
        elif r < 0.95:
            cp = rng.choice(CPS)
            evs.append(Balance(id=f"b{k}", venue=cp, counterparty=cp,
                               asset=rng.choice(["BTC", "USDC", "ETH"]),
                               total=round(rng.uniform(0, 3), 3), ts=t))
        else:
            evs.append(idx(f"x{k}", "USDC-USD-INDEX", t, 1 + rng.gauss(0, 0.002)))
    return evs


class _Part(StatelessSinkPartition[Any]):
    def __init__(self, path: Path) -> None:
        self.f = path.open("ab")

    def write_batch(self, items: list[Any]) -> None:
        for it in items:
            # pickle, not JSON: the firm rollup's "*" does not match the wire
            # Name pattern yet (reported to the lead)
            pickle.dump(it, self.f)
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class JsonlDirSink(DynamicSink[Any]):
    """Each worker appends pickled items to ``out-<worker>.pkl`` in ``out_dir``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Part:
        return _Part(self.out_dir / f"out-{worker_index}.pkl")


def build(records: list[Any], sink: Any, *, shards: int = 1) -> Dataflow:
    """aggregate_exposure -> enforce_limits, every output to ``sink``."""
    flow = Dataflow("risk_flow")
    inp = op.input("in", flow, TestingSource(records, batch_size=16))
    exp = aggregate_exposure("exposure", inp, config=worked_config(valuation_shards=shards),
                             clock=lambda: 0)
    lim = enforce_limits("limits", exp.exposures, None, config=limits_config(),
                         verifier=refuse_updates, clock=lambda: 0)
    op.output("out", op.merge("all", exp.exposures, exp.alerts, exp.errs, lim.utilizations,
                              lim.breaches, lim.alerts), sink)
    return flow


def flow() -> Dataflow:
    """Entry point for ``python -m bytewax.run tests.risk_flow_app:flow()``."""
    codec = Codec(clock=lambda: 0)
    data = Path(os.environ["RISK_FLOW_IN"]).read_bytes().splitlines()
    return build([codec.decode("in", line) for line in data],
                 JsonlDirSink(Path(os.environ["RISK_FLOW_OUT"])))
