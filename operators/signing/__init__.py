"""Signing: Ed25519 keys and signed envelopes, the trust file that says who may sign
what, and the commands signed on the way out and verified on the way in.

- :mod:`~riskguard.operators.signing.ops`: the bytewax operator :func:`sign_commands`;
- :mod:`~riskguard.operators.signing.commands`: :class:`SignLogic`, which stamps each
  mitigation command with its issuer and ``seq`` and signs it (:class:`SignConfig`);
- :mod:`~riskguard.operators.signing.crypto`: keys (:class:`Signer`,
  :class:`VerifyKey`), the domain-separated signing input and envelopes;
- :mod:`~riskguard.operators.signing.trust`: the trust file and :class:`TrustStore`,
  the verifier that enforces it;
- :mod:`~riskguard.operators.signing.operator_commands`: operators' signed commands
  (a resume, a manual halt), verified once each before the playbook sees them.
"""

from riskguard.operators.signing.commands import (
    STATE_VERSION,
    SignConfig,
    SignLogic,
    SignState,
    decode_command,
    sign_builder,
)
from riskguard.operators.signing.crypto import (
    Signer,
    VerifyKey,
    decode_envelope,
    encode_envelope,
    generate_key_file,
    load_public_key,
    save_public_key,
    sign_envelope,
)
from riskguard.operators.signing.operator_commands import (
    AckLogic,
    AckState,
    OperatorCommandLogic,
    OperatorCommandState,
)
from riskguard.operators.signing.ops import sign_commands
from riskguard.operators.signing.trust import RootSet, TrustDoc, TrustStore, parse_trust

__all__ = [
    "STATE_VERSION",
    "AckLogic",
    "AckState",
    "OperatorCommandLogic",
    "OperatorCommandState",
    "RootSet",
    "SignConfig",
    "SignLogic",
    "SignState",
    "Signer",
    "TrustDoc",
    "TrustStore",
    "VerifyKey",
    "decode_command",
    "decode_envelope",
    "encode_envelope",
    "generate_key_file",
    "load_public_key",
    "parse_trust",
    "save_public_key",
    "sign_builder",
    "sign_commands",
    "sign_envelope",
]
