"""The guard's backtest on Flink: the flow :func:`riskguard.dataflows.backtest.backtest_flow`
builds, run as a Flink job on a local mini-cluster over a JSONL file of records.

    python -m riskguard.flink.backtest --config guard.toml --records in.jsonl \\
        --parallelism 2 --out results/

writes ``commands.jsonl``, ``signals.jsonl``, ``utilization.jsonl``, ``audit.jsonl`` and
``dead_letters.jsonl`` as ``riskguard backtest`` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow
from riskguard.dataflows.backtest import OUTPUTS, backtest_flow
from riskguard.dataflows.guard import load_guard_config, load_keys
from riskguard.flink.graph import FlowRef
from riskguard.schemas import Codec, encode

_CODEC = Codec(clock=lambda: 0)  # as replay reads JSONL: no receive stamp


def read_records(path: str | Path) -> list[Any]:
    """The records (and dead letters, for lines that are not one) of a JSONL file of
    wire-contract records."""
    name = Path(path).name
    with Path(path).open("rb") as fh:
        return [_CODEC.decode(name, line, offset=i) for i, line in enumerate(fh)
                if line.strip()]


def flow_for(config: str, batch_size: int = 100) -> Dataflow:
    """The backtest flow of ``config``: the factory each Flink worker builds its copy of
    the flow from. Its input step is replaced by the job's source, so it is built over
    no records (the graph is the same whatever the input)."""
    cfg, digest = load_guard_config(config)
    signer, trust = load_keys(cfg)
    return backtest_flow(cfg, digest, signer=signer, trust=trust, records=[],
                         batch_size=batch_size)


def _as_batch(line: str) -> list[Any]:
    return [_CODEC.decode("records", line.encode())]


def run(config: str | Path, records: str | Path, *, parallelism: int = 1,
        batch_size: int = 100) -> dict[str, list[Any]]:
    """Run the backtest on a local Flink mini-cluster; every output by name."""
    from pyflink.common import Types, WatermarkStrategy  # noqa: PLC0415
    from pyflink.datastream import StreamExecutionEnvironment  # noqa: PLC0415
    from riskguard.flink.functions import EventTimeMs  # noqa: PLC0415
    from riskguard.flink.job import PICKLED, to_flink  # noqa: PLC0415

    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(parallelism)
    env.set_python_executable(sys.executable)
    ref = FlowRef("riskguard.flink.backtest:flow_for", (str(config), batch_size))
    lines = [line.decode() for line in Path(records).read_bytes().splitlines() if line.strip()]
    source = env.from_collection(lines, type_info=Types.STRING()).map(
        _as_batch, output_type=PICKLED).assign_timestamps_and_watermarks(
        WatermarkStrategy.for_monotonous_timestamps().with_timestamp_assigner(EventTimeMs()))
    outs = to_flink(ref, {"in": source})
    tagged = [s.map(_tagger(name), output_type=PICKLED) for name, s in outs.items()
              if name in OUTPUTS]
    found: dict[str, list[Any]] = {name: [] for name in OUTPUTS}
    merged = tagged[0].union(*tagged[1:]) if len(tagged) > 1 else tagged[0]
    with merged.execute_and_collect() as results:
        for name, item in results:
            found[name].append(item)
    return found


class _tagger:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, item: Any) -> tuple[str, Any]:
        return self.name, item


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m riskguard.flink.backtest",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--records", required=True, help="a JSONL file of records")
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--out", required=True, help="folder for the outputs' JSONL files")
    args = ap.parse_args(argv)
    found = run(args.config, args.records, parallelism=args.parallelism,
                batch_size=args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, items in found.items():
        (out / f"{name}.jsonl").write_bytes(b"".join(encode(i) + b"\n" for i in items))
    print(" ".join(f"{name} {len(items)}" for name, items in found.items()))
    return 0


if __name__ == "__main__":
    # run as the module itself, so the functions Flink pickles are found by reference
    from riskguard.flink.backtest import main as module_main

    sys.exit(module_main())
