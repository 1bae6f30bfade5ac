"""The guard's Kafka source for each process, and its output topics and their keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from riskguard.connectors.kafka import (
    Alignment,
    Fetch,
    KafkaInput,
    KeySplit,
    RecordChecks,
    kafka_input,
)
from riskguard.connectors.kafka.sink import route_key
from riskguard.connectors.topics import DETECTIONS, STREAM_TYPES
from riskguard.dataflows.guard.config import GuardConfig
from riskguard.operators.core.base import SplitOut, split_dead_letters
from riskguard.operators.core.clock import Clock
from riskguard.schemas import (
    Exposure,
)
from riskguard.schemas.codec import Codec
from riskguard.schemas.time_policy import EventTimePolicy
from riskguard.schemas.valuation import VALUATION_MAX_BYTES


def guard_input(flow: Dataflow, cfg: GuardConfig, streams: tuple[str, ...], clock: Clock,
                split: KeySplit | None = None) -> SplitOut[Any]:
    """The guard's Kafka source over ``streams``, as ``[input]`` configures it (a market
    process, given its ``split``: the market topic's keys it owns, the others whole)."""
    if "acks" in streams:
        main = guard_input(flow, cfg, tuple(s for s in streams if s != "acks"), clock, split)
        acks = _acks_input(flow, cfg, clock)
        return SplitOut(oks=op.merge("in_and_acks", main.oks, acks.oks),
                        errs=op.merge("in_and_ack_errs", main.errs, acks.errs))
    inp = cfg.input
    policy = EventTimePolicy(
        max_lateness_ns=inp.max_lateness_ns,
        max_future_skew_ns=inp.max_future_skew_ns,
        max_lead_ns=inp.max_lead_ns,
        clock=clock if inp.check_future else None,
    )
    align = None
    if inp.align_skew_s is not None:
        # the firm sums the market processes' parts: it reads them in step, and waits
        # for a quiet one as long as a restart may take
        firm = cfg.tier.role == "firm"
        align = Alignment(inp.align_skew_s, progress_topics=(
            {cfg.topic(DETECTIONS): cfg.tier.market_processes} if firm else {}),
            writer_wait_s=cfg.tier.market_wait_s if firm else 0.0)
    return kafka_input(
        "in", flow, brokers=cfg.kafka, topics=[cfg.topic(s) for s in streams],
        starting_offset=inp.starting_offset, idle_eof_s=inp.idle_eof_s, clock=clock,
        fetch=Fetch(batch_size=inp.batch_size, wait_max_ms=inp.fetch_wait_max_ms,
                    fair=inp.fair_reads),
        # the market processes checked the times of what their signals came from
        checks=RecordChecks(time_policy=policy, stamp_recv_ts=inp.stamp_recv_ts,
                            untimed_topics=frozenset({cfg.topic(DETECTIONS)})),
        align=align, split=split,
        # a market process's valuation record carries whole books; each topic carries
        # only its own record types
        codec=Codec(topic_max_bytes={cfg.topic(DETECTIONS): VALUATION_MAX_BYTES},
                    topic_types={cfg.topic(s): STREAM_TYPES[s] for s in streams}),
    )


def _acks_input(flow: Dataflow, cfg: GuardConfig, clock: Clock) -> SplitOut[Any]:
    """Executors' signed acks, a source of their own: they carry the executor's time, not
    event time, so they are neither time-checked nor ticked."""
    acks = cfg.topic("acks")
    items = op.input("acks_input", flow, KafkaInput(
        cfg.kafka, [acks], starting_offset=cfg.input.starting_offset,
        idle_eof_s=cfg.input.idle_eof_s, clock=clock,
        checks=RecordChecks(untimed_topics=frozenset({acks})),
        codec=Codec(topic_types={acks: STREAM_TYPES["acks"]})))
    return split_dead_letters("acks_split", items)


def exposures_key(rec: Any) -> str:
    """The exposures topic's Kafka key: a counterparty's exposures (``*``: the firm's)
    and one limit's utilizations (its path) each keep one partition, in order.

    >>> exposures_key(Exposure(counterparty="okx", ts=1, gross_notional=1.0,
    ...                        net_notional=1.0))
    'okx'
    """
    if type(rec) is Exposure:
        return rec.counterparty
    return str(getattr(rec, "limit_path", ""))


def audit_key(rec: Any) -> str:
    """Audit records and checkpoints of one chain share a Kafka partition, in order."""
    return str(getattr(rec, "chain", None) or getattr(rec, "origin", ""))


OUTPUT_STREAMS = ("commands", "dead_letters", "signals", "exposures", "audit")
"""The guard's output topics, each one of :class:`~riskguard.dataflows.guard.core.GuardOut`'s
streams."""


def output_keys(issuer: str) -> dict[str, Callable[[Any], str]]:
    """The Kafka key of each output topic's records, the same on both engines: commands
    by their signer (one partition keeps its ``seq`` order), exposures and audit records
    as above, signals and dead letters by their own key or id ('': none).

    >>> output_keys("guard-1")["commands"](None), output_keys("g")["signals"](None)
    ('guard-1', '')
    """
    return {"commands": lambda _env: issuer, "dead_letters": route_key,
            "signals": route_key, "exposures": exposures_key, "audit": audit_key}
