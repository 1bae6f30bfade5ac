"""Live exchange feeds into the guard's input topics (``riskguard feed``).

- :mod:`~riskguard.connectors.feeds.exchanges`: the table of exchanges, one entry each;
- :mod:`~riskguard.connectors.feeds.mapping`: cryptofeed's normalized records as wire
  records (or dead letters);
- :mod:`~riskguard.connectors.feeds.health`: a venue's heartbeat from its connections;
- :mod:`~riskguard.connectors.feeds.bridge`: the asyncio bridge through the lossless
  :class:`~riskguard.connectors.publish.Publisher`.

cryptofeed itself is the optional extra ``riskguard[feed]``; it is imported only when
a bridge starts.
"""

from riskguard.connectors.feeds.bridge import BridgeConfig, BridgeStats, FeedBridge
from riskguard.connectors.feeds.exchanges import CHANNELS, EXCHANGES, ExchangeSpec, spec_for
from riskguard.connectors.feeds.health import ConnectionSeen, HealthState, VenueHealth
from riskguard.connectors.feeds.mapping import FeedMapper, seconds_to_ns

__all__ = [
    "CHANNELS",
    "EXCHANGES",
    "BridgeConfig",
    "BridgeStats",
    "ConnectionSeen",
    "ExchangeSpec",
    "FeedBridge",
    "FeedMapper",
    "HealthState",
    "VenueHealth",
    "seconds_to_ns",
    "spec_for",
]
