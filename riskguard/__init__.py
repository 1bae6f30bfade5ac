"""riskguard: keep automated crypto trading alive and safe when markets, venues
or counterparties fail.

The code lives in four subpackages:

- :mod:`riskguard.schemas`: the typed wire contract (every record on a topic);
- :mod:`riskguard.connectors`: Kafka source and sink, file replay, dev broker;
- :mod:`riskguard.operators`: stateful logic and the bytewax operators over it;
- :mod:`riskguard.dataflows`: reference dataflows built from those operators.

This package itself holds only the CLI, config loading and the exceptions.
"""

__version__ = "0.1.0"
