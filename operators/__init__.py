"""riskguard's operators, by domain.

- :mod:`riskguard.operators.core`: plumbing every domain uses (the logic protocol and
  its bytewax adapter, clocks, de-duplication, metrics);
- :mod:`riskguard.operators.detection`: market records in, anomaly and dislocation
  signals out (features, the online detector, move bands, cross rates);
- :mod:`riskguard.operators.exposure`: positions and marks in, exposures and limit
  levels out (sharded valuation, counterparty and firm rollup, limits);
- :mod:`riskguard.operators.mitigation`: signals in, graduated mitigation commands out
  (the playbook and its rules, feed failover);
- :mod:`riskguard.operators.signing`: keys, signed envelopes, the trust file; commands
  signed on the way out and operators' commands verified on the way in;
- :mod:`riskguard.operators.audit`: the tamper-evident audit log (Merkle chains with
  signed checkpoints), its verification and proofs.

Old flat module paths
---------------------
Before the domain subpackages every module sat directly in this package
(``riskguard.operators.clock``, ``riskguard.operators.detector`` ...). bytewax recovery
snapshots pickle state classes by module path, so each moved module stays importable
under its old name as the *same* module object (an entry in ``sys.modules``, registered
below once the subpackages are imported). Modules split into a package of the same name
(``exposure``, ``audit``, ``signing``) re-export the old names from that package instead.
New code imports the new paths.
"""

import sys

from riskguard.operators import audit, core, detection, exposure, mitigation, signing

# old flat module name -> its module under the domain subpackages
_OLD_PATHS = {
    "base": "core.base",
    "clock": "core.clock",
    "dedup": "core.dedup",
    "end_of_input": "core.end_of_input",
    "metrics": "core.metrics",
    "observe": "core.observe",
    "anomaly": "detection.ops",
    "anomaly_hst": "detection.hst",
    "cross_rates": "detection.cross_rates",
    "detect_watch": "detection.detect_watch",
    "detector": "detection.detector",
    "features": "detection.features",
    "market_sim": "detection.market_sim",
    "move_bands": "detection.move_bands",
    "range_scorer": "detection.range_scorer",
    "score_quantile": "detection.score_quantile",
    "instruments": "exposure.instruments",
    "limits": "exposure.limits",
    "risk": "exposure.ops",
    "feeds": "mitigation.feeds",
    "playbook": "mitigation.playbook",
    "playbook_op": "mitigation.ops",
    "crypto": "signing.crypto",
    "operator_commands": "signing.operator_commands",
    "signing_op": "signing.ops",
    "trust": "signing.trust",
    "audit_op": "audit.ops",
}


def _register_old_paths() -> None:
    for old, new in _OLD_PATHS.items():
        module = sys.modules[f"{__name__}.{new}"]
        sys.modules[f"{__name__}.{old}"] = module
        setattr(sys.modules[__name__], old, module)


_register_old_paths()

__all__ = ["audit", "core", "detection", "exposure", "mitigation", "signing"]
