"""Signing, verifying and audit-append throughput, as ratios to bare cryptography.

Run: ``python bench/crypto_speed.py [--seconds 3]``. Each figure is per core
(one thread). The baselines run in the same process right before: bare
``cryptography`` Ed25519 ``sign``/``verify`` over the same bytes. The goal is
riskguard / baseline >= 0.8. Audit append is records/s with a signed
checkpoint every 1,000 records.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from riskguard.operators.audit import AuditConfig, AuditLogic
from riskguard.operators.crypto import PAYLOAD_COMMAND, Signer, pae
from riskguard.operators.signing import SignConfig, SignLogic
from riskguard.operators.trust import TrustStore, parse_trust, trust_doc_to_toml
from riskguard.schemas.commands import Audience, MitigationCommand
from riskguard.schemas.signals import Scope, ScopeKind

S = 1_000_000_000
T0 = 1_750_000_000 * S
AUD = Audience(env="prod", topic="riskguard.commands")


def rate(fn: Callable[[int], None], seconds: float) -> float:
    """Calls per second of ``fn(i)`` over about ``seconds``."""
    n, i, start = 0, 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            fn(i)
            i += 1
        n += 200
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def cmd(i: int) -> MitigationCommand:
    return MitigationCommand(
        command_id=f"cmd-{i}", issuer="engine-1", seq=0, issued_at=T0, expires_at=T0 + 60 * S,
        audience=AUD, action="halt_trading", scope=Scope(kind=ScopeKind.VENUE, value="binance"),
        reason="bench",
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    secs = ap.parse_args().seconds
    seed = bytes(range(32))
    raw_key = Ed25519PrivateKey.from_private_bytes(seed)
    raw_pub = raw_key.public_key()
    signer = Signer.from_private_bytes(seed, issuer="engine-1")
    trust = TrustStore(parse_trust(trust_doc_to_toml([{
        "name": "engine-1", "public_key": signer.public_key.hex(), "role": "risk-engine",
        "actions": ["*"], "scopes": ["*"]}])))
    payloads = [msgspec.json.encode(cmd(i)) for i in range(1000)]
    msgs = [pae(PAYLOAD_COMMAND, p) for p in payloads]
    raw_sigs = [raw_key.sign(m) for m in msgs]

    # signing: bare sign over the same PAE bytes vs the full SignLogic step
    base_sign = rate(lambda i: raw_key.sign(msgs[i % 1000]), secs)
    logic = SignLogic(signer, SignConfig(recent_ids=1000))
    ours_sign = rate(lambda i: logic.on_event(cmd(i)), secs)

    # verifying: bare verify vs decode + TrustStore.verify (all checks but replay)
    base_verify = rate(lambda i: raw_pub.verify(raw_sigs[i % 1000], msgs[i % 1000]), secs)
    envs = [SignLogic(signer, SignConfig()).on_event(cmd(i))[0] for i in range(1000)]

    def verify(i: int) -> None:
        trust.verify(envs[i % 1000], expected_payload_type=PAYLOAD_COMMAND, audience=AUD,
                     now_ns=T0)

    ours_verify = rate(verify, secs)

    audit = AuditLogic("bench/p0", signer, AuditConfig(checkpoint_every=1000))
    decisions = [cmd(i) for i in range(1000)]
    audit_rate = rate(lambda i: audit.on_event(decisions[i % 1000]), secs)

    print(f"bare cryptography sign      : {base_sign:10.0f} /s")
    print(f"riskguard sign_commands     : {ours_sign:10.0f} /s  ratio {ours_sign / base_sign:.2f}"
          " (goal >= 0.8)")
    print(f"bare cryptography verify    : {base_verify:10.0f} /s")
    print(f"riskguard TrustStore.verify : {ours_verify:10.0f} /s  ratio "
          f"{ours_verify / base_verify:.2f} (goal >= 0.8)")
    print(f"audit append (ckpt / 1,000) : {audit_rate:10.0f} records/s  ratio to bare sign "
          f"{audit_rate / base_sign:.2f}")


if __name__ == "__main__":
    main()
