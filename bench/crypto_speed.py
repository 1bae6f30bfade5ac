"""Signing, verifying and audit-append throughput, as ratios to bare cryptography.

Run: ``python bench/crypto_speed.py [--seconds 3] [--rounds 5]``. Each figure
is per core (one thread). Baselines run in the same process: bare
``cryptography`` Ed25519 ``sign``/``verify`` over the same bytes. To keep a
shared, noisy machine from skewing the ratio, baseline and riskguard run in
alternating short rounds (``--rounds`` of each, ``--seconds`` in total per
side); the ratio printed is the median of the per-round ratios, and the
rates are the median round. The goal is riskguard / baseline >= 0.8.

Verify is the subscriber's full path per message: ``decode_envelope`` of the
wire bytes, then ``TrustStore.verify`` (payload type, signature over the exact
bytes, key status, payload parse, issuer, role/action/scope authorization,
two-person rule, audience, freshness); replay is not included (it is the
subscriber's durable state). Audit append is records/s with a signed
checkpoint every 1,000 records. Audit verify is ``verify_log`` over logs of 1,000 and
4,000 records with a checkpoint after every record (a guard whose decisions come
further apart than ``checkpoint_interval_ns``): one pass, so 4x the records take
about 4x the time (the tree was rebuilt at every checkpoint before, 16x).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from riskguard.operators.audit import AuditConfig, AuditLogic, verify_log
from riskguard.operators.signing import SignConfig, SignLogic
from riskguard.operators.signing.crypto import (
    PAYLOAD_COMMAND,
    Signer,
    decode_envelope,
    encode_envelope,
    pae,
)
from riskguard.operators.signing.trust import TrustStore, parse_trust
from riskguard.operators.signing.trust_toml import trust_doc_to_toml
from riskguard.schemas.commands import Audience, MitigationCommand
from riskguard.schemas.signals import Scope, ScopeKind

S = 1_000_000_000
T0 = 1_750_000_000 * S
AUD = Audience(env="prod", topic="riskguard.commands")


def rate(fn: Callable[[int], object], seconds: float) -> float:
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


def paired(base: Callable[[int], object], ours: Callable[[int], object], seconds: float,
           rounds: int) -> tuple[float, float, float]:
    """Alternate ``rounds`` short runs of each; return (base rate, our rate, ratio), medians."""
    b, o, r = [], [], []
    for _ in range(rounds):
        rb = rate(base, seconds / rounds)
        ro = rate(ours, seconds / rounds)
        b.append(rb)
        o.append(ro)
        r.append(ro / rb)
    return statistics.median(b), statistics.median(o), statistics.median(r)


def cmd(i: int) -> MitigationCommand:
    return MitigationCommand(
        command_id=f"cmd-{i}", issuer="engine-1", seq=0, issued_at=T0, expires_at=T0 + 60 * S,
        audience=AUD, action="halt_trading", scope=Scope(kind=ScopeKind.VENUE, value="binance"),
        reason="bench",
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    secs, rounds = args.seconds, args.rounds
    seed = bytes(range(32))
    raw_key = Ed25519PrivateKey.from_private_bytes(seed)
    raw_pub = raw_key.public_key()
    signer = Signer.from_private_bytes(seed, issuer="engine-1")
    trust = TrustStore(parse_trust(trust_doc_to_toml([{
        "name": "engine-1", "public_key": signer.public_key.hex(), "role": "risk-engine",
        "actions": ["*"], "scopes": ["*"]}])))
    payloads = [msgspec.json.encode(cmd(i)) for i in range(1000)]
    msgs = [pae(PAYLOAD_COMMAND, p) for p in payloads]

    # signing: bare sign over the same PAE bytes vs the full SignLogic step
    logic = SignLogic(signer, SignConfig(recent_ids=1000))
    base_sign, ours_sign, sign_ratio = paired(
        lambda i: raw_key.sign(msgs[i % 1000]), lambda i: logic.on_event(cmd(i)), secs, rounds)

    # verifying: bare verify vs decode_envelope(wire bytes) + TrustStore.verify
    envs = [SignLogic(signer, SignConfig()).on_event(cmd(i))[0] for i in range(1000)]
    wire = [encode_envelope(e) for e in envs]
    bare_msgs = [pae(PAYLOAD_COMMAND, e.payload) for e in envs]
    bare_sigs = [e.signatures[0].sig for e in envs]

    def verify(i: int) -> None:
        trust.verify(decode_envelope(wire[i % 1000]), expected_payload_type=PAYLOAD_COMMAND,
                     audience=AUD, now_ns=T0)

    base_verify, ours_verify, verify_ratio = paired(
        lambda i: raw_pub.verify(bare_sigs[i % 1000], bare_msgs[i % 1000]), verify, secs, rounds)

    audit = AuditLogic("bench/p0", signer, AuditConfig(checkpoint_every=1000))
    decisions = [cmd(i) for i in range(1000)]
    audit_rate = rate(lambda i: audit.on_event(decisions[i % 1000]), secs)

    verify_s = {}
    for n in (1000, 4000):
        log = AuditLogic("bench/p0", signer, AuditConfig(checkpoint_every=1))
        items = [x for i in range(n) for x in log.on_event(decisions[i % 1000])]
        t = time.perf_counter()
        verify_log(items, {signer.key_id: signer.public_key})
        verify_s[n] = time.perf_counter() - t

    print(f"bare cryptography sign      : {base_sign:10.0f} /s")
    print(f"riskguard sign_commands     : {ours_sign:10.0f} /s  ratio {sign_ratio:.2f}"
          " (goal >= 0.8)")
    print(f"bare cryptography verify    : {base_verify:10.0f} /s")
    print(f"riskguard decode+verify     : {ours_verify:10.0f} /s  ratio "
          f"{verify_ratio:.2f} (goal >= 0.8)")
    print(f"audit append (ckpt / 1,000) : {audit_rate:10.0f} records/s  ratio to bare sign "
          f"{audit_rate / base_sign:.2f}")
    print(f"audit verify (ckpt / record): 1,000 records {verify_s[1000]:.2f} s, 4,000 records "
          f"{verify_s[4000]:.2f} s (x{verify_s[4000] / verify_s[1000]:.1f}; linear: about 4)")


if __name__ == "__main__":
    main()
