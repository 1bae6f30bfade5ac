"""The guard's Kafka source for each tier and placement, and its output topics' keys."""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from riskguard.connectors.kafka import kafka_input
from riskguard.connectors.kafka.source import KafkaInput
from riskguard.connectors.placement import (
    Broadcast,
    MarketOwners,
)
from riskguard.dataflows.guard.config import (
    DETECTIONS,
    STREAM_TYPES,
    GuardConfig,
    _fed_by_market,
    _split,
    price_key_prefixes,
)
from riskguard.dataflows.guard.steps import is_broadcast
from riskguard.operators.core.base import SplitOut, split_dead_letters
from riskguard.operators.core.clock import Clock
from riskguard.schemas import (
    Exposure,
)
from riskguard.schemas.codec import Codec
from riskguard.schemas.time_policy import EventTimePolicy
from riskguard.schemas.valuation import VALUATION_MAX_BYTES


def _input(flow: Dataflow, cfg: GuardConfig, streams: tuple[str, ...], clock: Clock,
           owners: MarketOwners | None = None) -> Any:
    """The guard's Kafka source over ``streams``, as ``[input]`` configures it (a market
    process, given its ``owners``: the market topic split by underlying, the others
    whole)."""
    if "acks" in streams:
        main = _input(flow, cfg, tuple(s for s in streams if s != "acks"), clock, owners)
        acks = _acks_input(flow, cfg, clock)
        return SplitOut(oks=op.merge("in_and_acks", main.oks, acks.oks),
                        errs=op.merge("in_and_ack_errs", main.errs, acks.errs))
    policy = EventTimePolicy(
        max_lateness_ns=cfg.input.max_lateness_ns,
        max_future_skew_ns=cfg.input.max_future_skew_ns,
        clock=clock if cfg.input.check_future else None,
    )
    return kafka_input(
        "in", flow, brokers=cfg.kafka, topics=[cfg.topic(s) for s in streams],
        starting_offset=cfg.input.starting_offset, idle_eof_s=cfg.input.idle_eof_s,
        time_policy=policy, clock=clock, stamp_recv_ts=cfg.input.stamp_recv_ts,
        batch_size=cfg.input.batch_size, fetch_wait_max_ms=cfg.input.fetch_wait_max_ms,
        align_skew_s=cfg.input.align_skew_s, share_consumer=cfg.input.share_consumer,
        fair_reads=cfg.input.fair_reads, bundle=cfg.input.bundle_partitions,
        # the detect tier checked the times of what its signals came from
        untimed_topics=[cfg.topic(DETECTIONS)],
        # a market process's valuation record carries whole books; each topic carries
        # only its own record types
        codec=Codec(topic_max_bytes={cfg.topic(DETECTIONS): VALUATION_MAX_BYTES},
                    topic_types={cfg.topic(s): STREAM_TYPES[s] for s in streams}),
        # market processes' valuations: applied in step with each other (the firm tier
        # sums their parts), not as fast as each process wrote them
        progress_topics=({cfg.topic(DETECTIONS): cfg.tier.detect_workers}
                         if _fed_by_market(cfg) else None),
        **(_split_options(cfg) if owners is None else _market_options(cfg, owners)),
    )




def _acks_input(flow: Dataflow, cfg: GuardConfig, clock: Clock) -> SplitOut[Any]:
    """Executors' signed acks, a source of their own: they carry the executor's time, not
    event time, so they are neither time-checked nor ticked, and the input topics' source
    partitions land on the same workers with or without them. An ack that cannot be read
    is a dead letter like any other input's."""
    acks = cfg.topic("acks")
    items = op.input("acks_input", flow, KafkaInput(
        cfg.kafka, [acks], starting_offset=cfg.input.starting_offset,
        idle_eof_s=cfg.input.idle_eof_s, clock=clock, untimed_topics=[acks],
        codec=Codec(topic_types={acks: STREAM_TYPES["acks"]})))
    return split_dead_letters("acks_split", items)


def _market_options(cfg: GuardConfig, owners: MarketOwners) -> dict[str, Any]:
    """kafka_input options for a market process: its replica of the market topic, keeping
    the messages whose key's underlying it owns and every index and oracle price (with
    ``input.aligned_market``: the market topic's partitions produced for it, with
    ``placement.aligned_partitions(..., owners=...)``)."""
    market = "aligned_topics" if cfg.input.aligned_market else "key_split_topics"
    return {
        market: [cfg.topic("market")],
        "broadcast": Broadcast(key_prefixes=price_key_prefixes(cfg), records=is_broadcast),
        "replica_of": (owners.index, owners.processes),
        "owner": owners.of_key,
    }




def _split_options(cfg: GuardConfig) -> dict[str, Any]:
    """kafka_input options for ``input.split_market_by_key``: the market topic split by
    Kafka key, and heartbeats plus index and oracle prices read by every worker; for
    ``input.aligned_market``: the market topic's partitions read where their keys live."""
    if not _split(cfg):
        return {}
    market = "aligned_topics" if cfg.input.aligned_market else "key_split_topics"
    return {
        market: [cfg.topic("market")],
        "broadcast": Broadcast(topics=frozenset({cfg.topic("venue_status")}),
                               key_prefixes=price_key_prefixes(cfg),
                               records=is_broadcast),
    }


def exposures_key(rec: Any) -> str:
    """The exposures topic's Kafka key: a counterparty's exposures (``*``: the firm's)
    and one limit's utilizations (its path) each keep one partition, in order. Without
    it they had no key (they carry no id) and were spread over the partitions.

    >>> exposures_key(Exposure(counterparty="okx", ts=1, gross_notional=1.0,
    ...                        net_notional=1.0))
    'okx'
    """
    if type(rec) is Exposure:
        return rec.counterparty
    return str(getattr(rec, "limit_path", ""))


def _audit_key(rec: Any) -> str:
    """Audit records and checkpoints of one chain share a Kafka partition, in order."""
    return str(getattr(rec, "chain", None) or getattr(rec, "origin", ""))
