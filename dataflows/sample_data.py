"""The sample dataset shipped with riskguard: a thinned copy of the bundled demo scenario.

``riskguard backtest --sample`` and ``riskguard calibrate --sample`` read it
(``dataflows/data/sample.jsonl`` and ``sample_labels.json``): the demo scenario (seed 7,
from 2026-01-01 00:00 UTC) with BTC only, no options, quotes once a second, trades every
two seconds and null fields left out, to stay under 1 MB. It is generated, never edited:
a test checks that the shipped files are what :func:`write_sample` writes.

>>> recs, labels = build_sample()
>>> 3000 < len(recs) < 6000, [lab["kind"] for lab in labels["incidents"]]
(True, ['flash_crash', 'heartbeat_loss', 'exposure_breach'])
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from riskguard.dataflows.demo_scenario import NS, OPTIONS, build_scenario
from riskguard.schemas import OptionQuote, Quote, Trade
from riskguard.schemas.codec import encode

from riskguard.config import read_toml
from riskguard.errors import ConfigError
from riskguard.toml_text import toml_value

START_NS = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z
DATA = "sample.jsonl"
LABELS = "sample_labels.json"
_MS = 1_000_000


def _keep(rec: Any) -> bool:
    if isinstance(rec, OptionQuote):
        return False
    instrument = getattr(rec, "instrument", "")
    if instrument.startswith("ETH") or instrument in OPTIONS:
        return False
    if isinstance(rec, Quote):  # once a second
        return (rec.ts - START_NS) % NS == 0
    if isinstance(rec, Trade):  # once every two seconds (1 ms after the quote)
        return (rec.ts - START_NS) % (2 * NS) == _MS
    return True


def build_sample() -> tuple[list[Any], dict[str, Any]]:
    """The sample's records (event-time order) and its labels document."""
    sc = build_scenario(START_NS)
    recs = [r for r in sc.events if _keep(r)]
    labels = {"incidents": [{"kind": i.kind, "scope": i.scope, "start": i.start_ns,
                             "end": i.end_ns} for i in sc.incidents]}
    return recs, labels


def _compact(rec: Any) -> bytes:
    """The wire encoding without null fields (each decodes to the same record)."""
    doc = orjson.loads(encode(rec))
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


def write_sample(folder: str | Path) -> tuple[Path, Path]:
    """Write ``sample.jsonl`` and ``sample_labels.json`` into ``folder``."""
    d = Path(folder)
    recs, labels = build_sample()
    data = d / DATA
    data.write_bytes(b"".join(_compact(r) + b"\n" for r in recs))
    lab = d / LABELS
    lab.write_text(json.dumps(labels, indent=1) + "\n", encoding="utf-8")
    return data, lab


def sample_files() -> tuple[Path, Path]:
    """The shipped sample's data and labels files (inside the installed package)."""
    pkg = resources.files("riskguard.dataflows") / "data"
    return Path(str(pkg / DATA)), Path(str(pkg / LABELS))


def sample_markets() -> tuple[set[str], set[str], set[str]]:
    """What the shipped sample holds: the instruments it has market data of, the ones its
    fills and positions trade, and the assets of its balances."""
    data, _labels = sample_files()
    markets, traded, assets = set(), set(), set()
    with data.open("rb") as fh:
        for line in fh:
            doc = orjson.loads(line)
            kind = doc.get("type")
            if kind in ("fill", "position"):
                traded.add(doc["instrument"])
            elif kind == "balance":
                assets.add(doc["asset"])
            elif "instrument" in doc and doc.get("venue") != "index":
                markets.add(doc["instrument"])
    return markets, traded, assets


def check_covers(cfg: Any, where: str) -> None:
    """Refuse a guard config that leaves out the instruments the sample's fills trade or
    the assets its balances hold (their records would be dead letters); the error gives
    the declarations the sample needs (``dataflows/demo.toml``'s)."""
    inst = cfg.exposure.instruments
    markets, traded, assets = sample_markets()
    declared = set(inst.instruments)
    problems = []
    if traded - declared:
        problems.append(f"does not declare {', '.join(sorted(traded - declared))} (the "
                        "sample's fills trade it)")
    unpriced = {a for a in assets if a != inst.reporting_currency and a not in inst.fx_index}
    if unpriced:
        problems.append(f"has no fx_index for {', '.join(sorted(unpriced))} (the sample's "
                        "balances hold it)")
    if not problems:
        return
    if declared - markets:
        problems.append(f"declares {', '.join(sorted(declared - markets))}, of which the "
                        "sample has no data")
    demo = read_toml(str(resources.files("riskguard.dataflows").joinpath("demo.toml")))
    specs = demo["exposure"]["instruments"]
    needs = [f"[exposure.instruments.instruments] {toml_value(i)} = "
             f"{toml_value(specs['instruments'][i])}" for i in sorted(traded)]
    needs += [f"[exposure.instruments] fx_index = {{ {a} = {toml_value(specs['fx_index'][a])} }}"
              for a in sorted(assets) if a in specs.get("fx_index", {})]
    raise ConfigError(
        where, f"a config whose instruments the sample covers (it has data of "
        f"{', '.join(sorted(markets))}, and its fills and balances need "
        f"{' and '.join(needs)}, as dataflows/demo.toml declares them), or your own files "
        "with --data", found_text="a config that " + "; ".join(problems))


if __name__ == "__main__":  # regenerate: python -m riskguard.dataflows.sample_data
    here = Path(str(resources.files("riskguard.dataflows") / "data"))
    here.mkdir(exist_ok=True)
    for p in write_sample(here):
        print(p, p.stat().st_size)
