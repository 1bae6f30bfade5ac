"""``riskguard limit new|cosign|show``: a signed runtime change to one limit.

A limit admin writes and signs a :class:`~riskguard.schemas.commands.LimitUpdate` into
a file (``new``), a second person adds a signature where the trust file's two-person
rule asks for one (``cosign``), either checks it (``show``, with ``--trust`` against the
trust file) and publishes it to the guard's ``limit_updates`` topic with ``riskguard publish FILE
--topic limit_updates``. The guard verifies it as it verifies a command (the key's role
must allow limit updates) and applies it from then on (docs/exposure.md).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import msgspec

from riskguard.cli_args import seconds
from riskguard.cli_command import add_signature, describe, trust_of
from riskguard.connectors.topics import topic_name
from riskguard.errors import ConfigError, VerificationError
from riskguard.operators.exposure.limit_specs import KINDS
from riskguard.operators.exposure.limit_updates import route_update
from riskguard.operators.signing.crypto import (
    PAYLOAD_LIMIT_UPDATE,
    Signer,
    decode_envelope,
    encode_envelope,
    sign_envelope,
)
from riskguard.schemas import RiskAlert
from riskguard.schemas.commands import Audience, LimitUpdate, SignedEnvelope

_update = msgspec.json.Decoder(LimitUpdate)


def _checked(upd: LimitUpdate) -> LimitUpdate:
    """``upd`` as the guard would take it, or the ConfigError naming what it refuses."""
    try:
        upd = _update.decode(msgspec.json.encode(upd))  # the schema's own bounds
    except msgspec.ValidationError as err:
        raise ConfigError("limit update", "values the schema takes", str(err)) from None
    routed = route_update(upd, upd.issued_at)
    if isinstance(routed, RiskAlert):
        raise ConfigError("--path/--kind", "a limit the guard has",
                          f"{routed.details['reason']}: {routed.details['detail']}")
    return upd


def _new(args: argparse.Namespace) -> int:
    if args.limit is None and args.warn is None and args.hard is None and not args.reset_latch:
        raise ConfigError("--limit", "a new --limit, --warn or --hard level, or --reset-latch",
                          None)
    signer = Signer.from_file(args.key, issuer=args.issuer)
    now = time.time_ns()
    topic = args.topic or topic_name(args.env, "limit_updates")
    upd = _checked(LimitUpdate(
        update_id=str(uuid.uuid4()), issuer=args.issuer, issued_at=now,
        expires_at=now + int(args.ttl * 1e9), audience=Audience(env=args.env, topic=topic),
        limit_path=args.path, kind=args.kind, limit=args.limit, warn=args.warn,
        hard=args.hard, reset_latch=args.reset_latch, reason=args.reason))
    env = sign_envelope(PAYLOAD_LIMIT_UPDATE, msgspec.json.encode(upd), [signer])
    Path(args.out).write_bytes(encode_envelope(env) + b"\n")
    sys.stdout.write(
        f"wrote {args.out}: {upd.kind} of {upd.limit_path} signed by {signer.key_id} "
        f"({args.issuer}); expires in {args.ttl:g}s; publish it with: riskguard publish "
        f"{args.out} --topic limit_updates --env {args.env} --brokers HOST:PORT\n")
    return 0


def _read(path: str) -> tuple[SignedEnvelope, LimitUpdate]:
    env = decode_envelope(Path(path).read_bytes())
    if env.payload_type != PAYLOAD_LIMIT_UPDATE:
        raise VerificationError("wrong_payload_type", f"{path} holds {env.payload_type!r}, "
                                "not a limit update (a command: riskguard command show)")
    try:
        return env, _update.decode(env.payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise VerificationError("malformed_payload", str(err)[:200]) from None


def _show(args: argparse.Namespace) -> int:
    env, upd = _read(args.file)
    sys.stdout.write(describe(env, upd))
    if not args.trust:
        return 0
    trust = trust_of(args.trust, args.roots)
    try:
        trust.verify(env, expected_payload_type=PAYLOAD_LIMIT_UPDATE, audience=upd.audience,
                     now_ns=time.time_ns())
        _checked(upd)
    except (VerificationError, ConfigError) as err:
        sys.stdout.write(f"NOT VALID: {err}\n")
        return 1
    sys.stdout.write(f"valid for env {upd.audience.env!r}, topic {upd.audience.topic!r}\n")
    return 0


def _cosign(args: argparse.Namespace) -> int:
    env, upd = _read(args.file)
    _checked(upd)  # never add a signature to an update the guard would refuse
    sys.stdout.write(describe(env, upd))
    add_signature(env, args.key, args.out or args.file)  # the bytes reviewed above
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    limit = sub.add_parser("limit", help="write, show and check a signed runtime change to "
                           "one limit (publish it with riskguard publish)")
    ls = limit.add_subparsers(dest="limit_action", metavar="ACTION", required=True)
    n = ls.add_parser("new", help="write a limit update signed by your key")
    n.add_argument("--path", required=True, help="the limit: firm, counterparty.<cp>, "
                   "counterparty.<cp>.asset.<a> or counterparty.<cp>.instrument.<i>")
    n.add_argument("--kind", required=True, choices=KINDS, metavar="KIND",
                   help="the limit kind: " + ", ".join(KINDS))
    n.add_argument("--limit", type=float, help="the new limit")
    n.add_argument("--warn", type=float, help="the new warning level")
    n.add_argument("--hard", type=float, help="the new hard level")
    n.add_argument("--reset-latch", action="store_true", help="clear a manual-reset latch")
    n.add_argument("--reason", required=True, help="why (a ticket, a decision)")
    n.add_argument("--key", required=True, help="your private key (role limit-admin)")
    n.add_argument("--issuer", required=True, help="your name in the trust file")
    n.add_argument("--env", required=True, help="the guard's env, e.g. prod (the audience)")
    n.add_argument("--topic", help="the limit-updates topic (default "
                   "<env>.riskguard.limit_updates.v1)")
    n.add_argument("--ttl", type=seconds(), default=300.0,
                   help="seconds until it expires (the trust file's max_ttl_s bounds it)")
    n.add_argument("--out", required=True, help="envelope file to write")
    n.set_defaults(func=_new)
    c = ls.add_parser("cosign", help="review a limit update and add your signature (a "
                      "raise past the trust file's two_person.limit_cap needs two people)")
    c.add_argument("file", help="the limit update (envelope) file to co-sign")
    c.add_argument("--key", required=True, help="your private key")
    c.add_argument("--out", help="write here instead of in place")
    c.set_defaults(func=_cosign)
    s = ls.add_parser("show", help="print a limit update file; with --trust, verify it")
    s.add_argument("file", help="the limit update (envelope) file")
    s.add_argument("--trust", help="trust.toml: also verify it against the trust file")
    s.add_argument("--roots", help="roots.toml for --trust: the pinned root keys")
    s.set_defaults(func=_show)
