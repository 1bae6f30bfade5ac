"""``riskguard feed``: bridge a live exchange feed (cryptofeed) into the guard's input
topics, with the venue's heartbeats, on a primary feed, a backup, or both."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from riskguard.config import common_config
from riskguard.errors import ConfigError


def _list_exchanges() -> int:
    from riskguard.connectors.feeds.exchanges import EXCHANGES  # noqa: PLC0415

    out = sys.stdout
    out.write(f"{'exchange':<16} {'venue':<9} {'symbols like':<15} channels\n")
    for spec in EXCHANGES.values():
        out.write(f"{spec.name:<16} {spec.venue:<9} {spec.symbol_example:<15} "
                  f"{','.join(spec.channels)}\n")
    return 0


def _bridge_config(args: argparse.Namespace) -> Any:
    from riskguard.connectors.feeds import bridge  # noqa: PLC0415  (heavy imports)
    from riskguard.connectors.feeds.exchanges import spec_for  # noqa: PLC0415

    for flag in ("exchange", "symbols", "channels"):
        if not getattr(args, flag):
            raise ConfigError(f"feed --{flag}", "a value (riskguard feed --list shows the "
                              "exchanges, their channels and symbols)")
    return bridge.BridgeConfig(
        spec=spec_for(args.exchange), symbols=bridge.parse_list(args.symbols),
        channels=bridge.parse_list(args.channels), feeds=tuple(bridge.feeds_of(args.feed)),
        heartbeat_s=args.heartbeat, silence_s=args.silence, restart_after_s=args.restart_after,
        candle_interval=args.candle_interval, aliases=_aliases(args.alias or []),
    ).validate()


def _aliases(pairs: list[str]) -> dict[str, str]:
    """``--alias XBT=BTC`` (repeatable) as a mapping; ``ConfigError`` naming a bad one.

    >>> _aliases(["XBT=BTC"])
    {'XBT': 'BTC'}
    """
    out = {}
    for pair in pairs:
        old, eq, new = pair.partition("=")
        if not (eq and old.strip() and new.strip()):
            raise ConfigError("feed --alias", "FROM=TO, e.g. XBT=BTC", pair)
        out[old.strip()] = new.strip()
    return out


async def _run(feed_bridge: Any, duration: float | None, banner: str) -> Any:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop cleanly: a last "down", a flush
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    try:
        return await feed_bridge.run(stop, duration, lambda: sys.stderr.write(banner))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)


def _feed(args: argparse.Namespace) -> int:
    if args.list:
        return _list_exchanges()
    config = _bridge_config(args)
    if args.duration is not None and not args.duration > 0:
        raise ConfigError("feed --duration", "a number of seconds > 0", args.duration)
    try:
        import cryptofeed  # noqa: F401, PLC0415
    except ImportError:
        raise ConfigError("feed", "cryptofeed installed: pip install 'riskguard[feed]'",
                          "no module named 'cryptofeed'") from None
    from riskguard.cli import reach_kafka  # noqa: PLC0415  (the CLI imports this module)
    from riskguard.connectors.feeds.bridge import FeedBridge  # noqa: PLC0415
    from riskguard.connectors.publish import Publisher  # noqa: PLC0415
    from riskguard.connectors.topics import topic_name  # noqa: PLC0415

    cfg = common_config(args.config, brokers=args.brokers, env=args.env)
    reach_kafka(cfg.kafka, "--brokers HOST:PORT (or [kafka] bootstrap in --config)")
    spec = config.spec
    banner = (f"riskguard feed: {spec.name} (venue {spec.venue}) {','.join(config.channels)} "
              f"for {','.join(config.symbols)} on feed {' and '.join(config.feeds)} into "
              f"{topic_name(cfg.env, 'market')}; Ctrl-C stops\n")
    feed_bridge = FeedBridge(config, Publisher(cfg.kafka, cfg.env))
    stats = asyncio.run(_run(feed_bridge, args.duration, banner))
    out = sys.stdout
    out.write(f"produced {stats.acked:,} (every one acknowledged)\n")
    for stream, n in sorted(stats.per_stream.items()):
        out.write(f"  {topic_name(cfg.env, stream):<40} {n:,}\n")
    for channel, n in sorted(stats.per_channel.items()):
        out.write(f"  channel {channel:<32} {n:,}\n")
    for state, n in sorted(stats.states.items()):
        out.write(f"  heartbeats {state:<29} {n:,}\n")
    if stats.restarts:
        out.write(f"  feeds started afresh after --restart-after {stats.restarts:,}\n")
    if stats.unfinished:
        out.write(f"  candles still in progress, passed over {stats.unfinished:,}\n")
    for reason, n in stats.dead_letters.most_common():
        out.write(f"  dead letters {reason:<27} {n:,}\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # argparse private generic
    p = sub.add_parser(
        "feed", help="bridge a live exchange feed (cryptofeed) into the guard's input topics",
        description="Connect to an exchange's websocket feed through cryptofeed, map every "
                    "message to the wire contract and produce it (idempotent, acks=all, every "
                    "delivery checked) to <env>.riskguard.market.v1, with a VenueStatus "
                    "heartbeat per feed on venue_status and misfits on dead_letters. Runs "
                    "until Ctrl-C (or --duration). Exit 0 when stopped, 2 on an error (a "
                    "delivery Kafka did not acknowledge included). Needs: pip install "
                    "'riskguard[feed]'. See docs/feeds.md.")
    p.add_argument("--exchange", metavar="NAME",
                   help="the exchange: binance-futures, bybit, okx, deribit (--list)")
    p.add_argument("--symbols", metavar="S[,S...]",
                   help="cryptofeed symbols, e.g. BTC-USDT-PERP,ETH-USDT-PERP; each is also "
                   "the records' instrument")
    p.add_argument("--channels", metavar="C[,C...]",
                   help="trades, l1, funding, liquidations, open_interest, index, candles "
                   "(what the exchange serves: --list)")
    p.add_argument("--feed", choices=("primary", "backup", "both"), default="primary",
                   help="the feed name the records carry; both: two connections in this "
                   "process (default primary)")
    p.add_argument("--config", help="TOML config: its env and [kafka] (e.g. guard.toml)")
    p.add_argument("--brokers", "--bootstrap", dest="brokers",
                   help="Kafka bootstrap HOST:PORT (overrides [kafka] bootstrap; default "
                   "127.0.0.1:9092)")
    p.add_argument("--env", help="environment, the topic prefix (overrides env in --config)")
    p.add_argument("--heartbeat", type=float, default=1.0, metavar="S",
                   help="seconds between VenueStatus heartbeats (default 1)")
    p.add_argument("--silence", type=float, default=10.0, metavar="S",
                   help="a connection without a message this long is degraded (default 10)")
    p.add_argument("--restart-after", type=float, default=60.0, metavar="S",
                   help="a connection silent this long is re-opened, a feed down this long "
                   "started afresh (default 60; -1 never)")
    p.add_argument("--alias", action="append", metavar="FROM=TO",
                   help="a symbol part the exchange spells its own way (XBT=BTC: XBT/USD "
                        "becomes BTC-USD); repeatable")
    p.add_argument("--candle-interval", default="1m", metavar="I",
                   help="candle interval for the candles channel (default 1m)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="stop after S seconds (default: run until Ctrl-C)")
    p.add_argument("--list", action="store_true",
                   help="list the exchanges, their venue, symbols and channels, and exit")
    p.set_defaults(func=_feed)
