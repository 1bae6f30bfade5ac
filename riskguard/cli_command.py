"""``riskguard command new|cosign|show|publish``: operators' signed commands, e.g. the
two-person resume of a firm-wide halt.

Operator A writes and signs the command into a file; operator B reviews the
exact payload (``show``) and adds a second signature over the same bytes
(``cosign``); either publishes it (``publish``) to the commands topic, where
executors verify it, and to the guard's limit-updates topic, where the guard
verifies it before its playbook lifts the mitigation. The two-person rule is
enforced by the verifiers (the trust file's ``[two_person]`` section), never
by the file: the approvals the guard counts are the distinct authorized
signatures, whatever the payload says.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from riskguard.cli_args import seconds
from riskguard.config import common_config
from riskguard.connectors.command_log import last_signed_seq
from riskguard.connectors.kafka.producer import CheckedProducer
from riskguard.connectors.publish import envelope_key
from riskguard.connectors.settings import KafkaSettings
from riskguard.errors import ConfigError, DeliveryError, VerificationError
from riskguard.operators.signing.crypto import (
    PAYLOAD_COMMAND,
    Signer,
    decode_envelope,
    encode_envelope,
    sign_envelope,
)
from riskguard.operators.signing.trust import RootSet, TrustStore
from riskguard.schemas.action_params import check_params, param_kind
from riskguard.schemas.commands import (
    PROTECTIVE,
    Action,
    Audience,
    LimitUpdate,
    MitigationCommand,
    SignedEnvelope,
)
from riskguard.schemas.signals import Scope, ScopeKind

_cmd_decoder = msgspec.json.Decoder(MitigationCommand)


def parse_scope(label: str) -> Scope:
    """``kind:value`` or ``kind:venue/value``, as :meth:`Scope.label` writes it.

    >>> parse_scope("firm:*").label(), parse_scope("instrument:okx/BTC-USDT").venue
    ('firm:*', 'okx')
    """
    kind, sep, rest = label.partition(":")
    if not sep or kind not in {k.value for k in ScopeKind} or not rest:
        kinds = "|".join(k.value for k in ScopeKind)
        raise ConfigError("--scope", f"{kinds}:VALUE (e.g. firm:* or venue:okx)", label)
    venue, slash, value = rest.partition("/")
    if slash and kind in ("instrument", "underlying"):
        return Scope(kind=ScopeKind(kind), value=value, venue=venue)
    return Scope(kind=ScopeKind(kind), value=rest)


def _param(action: str, text: str) -> tuple[str, Any]:
    """``NAME=VALUE``, typed as ``action`` takes param NAME (``a,b,c`` for a list).

    >>> _param("widen_quotes", "bps=25"), _param("reroute_order_flow", "targets=okx")
    (('bps', 25.0), ('targets', ['okx']))
    """
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ConfigError("--param", "NAME=VALUE (a list as a,b,c)", text)
    kind = param_kind(action, name)
    if kind in ("names", "ids", "actions") or (kind is None and "," in value):
        return name, [v.strip() for v in value.split(",") if v.strip()]
    if kind in ("name", "id", "action"):
        return name, value
    try:
        return name, float(value)
    except ValueError:
        return name, value  # check_params names what a number param got


def _read(path: str) -> SignedEnvelope:
    env = decode_envelope(Path(path).read_bytes())
    if env.payload_type != PAYLOAD_COMMAND:
        raise VerificationError("wrong_payload_type", f"{path} holds {env.payload_type!r}, "
                                "not a command (a limit update: riskguard limit show; "
                                "riskguard publish FILE --topic limit_updates)")
    return env


def _write(path: str, env: SignedEnvelope) -> None:
    Path(path).write_bytes(encode_envelope(env) + b"\n")


def _new(args: argparse.Namespace) -> int:
    params = dict(_param(args.action, p) for p in args.param)
    if args.lift:
        params["actions"] = list(args.lift)
    problem = check_params(args.action, params)
    if problem is not None:  # refused before any key is read or anything signed
        raise _bad_params(problem)
    signer = Signer.from_file(args.key, issuer=args.issuer)
    settings = (common_config(args.config, brokers=args.brokers).kafka
                if args.brokers or args.config else None)
    if args.seq is not None:
        seq = args.seq
    elif settings is not None:  # continue this issuer's sequence on the commands topic
        _reach(settings)
        seq = last_signed_seq(settings, args.topic, signer.public_key, args.issuer).seq + 1
    else:
        raise ConfigError("--seq", "a sequence number, or --brokers/--config to read the last one",
                          "neither")
    now = time.time_ns()
    cmd = MitigationCommand(
        command_id=str(uuid.uuid4()), issuer=args.issuer, seq=seq, issued_at=now,
        expires_at=now + int(args.ttl * 1e9), audience=Audience(env=args.env, topic=args.topic),
        action=Action(args.action), scope=parse_scope(args.scope), params=params,
        reason=args.reason, protective_orders_allowed=Action(args.action) in PROTECTIVE,
    )
    env = sign_envelope(PAYLOAD_COMMAND, msgspec.json.encode(cmd), [signer])
    _write(args.out, env)
    sys.stdout.write(f"wrote {args.out}: {cmd.action.value} on {cmd.scope.label()} seq {seq}, "
                     f"signed by {signer.key_id} ({args.issuer}); expires in {args.ttl:g}s\n")
    return 0


_CONFIG_HELP = ("a TOML config whose [kafka] (TLS, SASL) to connect with, e.g. guard.toml; "
                "--brokers changes only its address")


def _reach(brokers: str | KafkaSettings) -> None:
    from riskguard.cli import reach_kafka  # noqa: PLC0415  (the CLI module imports this one)

    reach_kafka(brokers, "--brokers HOST:PORT")


def _bad_params(problem: str) -> VerificationError:
    """What a verifier answers a command whose params do not fit its action."""
    return VerificationError("bad_params", problem)


def _decode(env: SignedEnvelope) -> MitigationCommand:
    try:
        return _cmd_decoder.decode(env.payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise VerificationError("malformed_payload", str(err)[:200]) from None


def _describe(env: SignedEnvelope) -> str:
    return describe(env, _decode(env))


def describe(env: SignedEnvelope, message: MitigationCommand | LimitUpdate) -> str:
    """What an operator reviews: the message's JSON, who signed it, when it expires."""
    body = json.dumps(msgspec.to_builtins(message), indent=2, sort_keys=True)
    sigs = ", ".join(s.key_id for s in env.signatures)
    left = (message.expires_at - time.time_ns()) / 1e9
    return f"{body}\nsignatures: {sigs}\nexpires in: {left:.0f}s\n"


def _show(args: argparse.Namespace) -> int:
    env = _read(args.file)
    sys.stdout.write(_describe(env))
    cmd = _decode(env)
    problem = check_params(cmd.action.value, cmd.params)
    if problem is not None:  # whatever its signatures, no executor may act on it
        sys.stdout.write(f"invalid: {problem}\n")
        return 1
    if args.trust:
        trust = trust_of(args.trust, args.roots)
        try:
            v = trust.verify(env, expected_payload_type=PAYLOAD_COMMAND, audience=cmd.audience,
                             now_ns=time.time_ns())
        except VerificationError as err:
            sys.stdout.write(f"NOT VALID: {err.reason}: {err.detail}\n")
            return 1
        aud = cmd.audience
        sys.stdout.write(f"valid for env {aud.env!r}, topic {aud.topic!r} (a subscriber of "
                         f"another refuses it): {len(v.signers)} authorized signer(s)\n")
    return 0


def _cosign(args: argparse.Namespace) -> int:
    env = _read(args.file)
    cmd = _decode(env)
    problem = check_params(cmd.action.value, cmd.params)
    if problem is not None:  # never add a signature to a command no executor may act on
        raise _bad_params(problem)
    sys.stdout.write(_describe(env))  # what is being approved, byte for byte
    add_signature(env, args.key, args.out or args.file)
    return 0


def trust_of(trust: str, roots: str | None) -> TrustStore:
    """The trust file ``--trust`` checked against ``--roots`` (which it needs)."""
    if not roots:
        raise ConfigError("--roots", "the pinned roots file, to check --trust", None)
    return TrustStore.load(trust, RootSet.load(roots))


def add_signature(env: SignedEnvelope, key: str, out: str) -> SignedEnvelope:
    """``env`` with the signature of ``key`` (``--key``) over the same payload bytes,
    written to ``out``; a key that signed it already is refused."""
    signer = Signer.from_file(key)
    if any(s.key_id == signer.key_id for s in env.signatures):
        raise ConfigError("--key", "a key that has not signed this yet", signer.key_id)
    signed = msgspec.structs.replace(
        env, signatures=[*env.signatures, signer.sign(env.payload_type, env.payload)])
    _write(out, signed)
    sys.stdout.write(f"added signature {signer.key_id}; "
                     f"{len(signed.signatures)} signature(s) now\n")
    return signed


def _publish(args: argparse.Namespace) -> int:
    env = _read(args.file)
    data = encode_envelope(env)
    cmd = _decode(env)
    problem = check_params(cmd.action.value, cmd.params)
    if problem is not None:
        raise _bad_params(problem)
    if not args.brokers and not args.config:
        raise ConfigError("--brokers", "the Kafka to publish to (--brokers, or --config with "
                          "[kafka])", None)
    settings = common_config(args.config, brokers=args.brokers).kafka
    _reach(settings)
    producer = CheckedProducer(settings, what="riskguard command publish", linger_ms=0)
    try:
        for topic in args.topic:
            producer.produce(topic, data, envelope_key(env))
        producer.flush()
    except DeliveryError as err:
        sys.stderr.write(f"riskguard command publish: NOT delivered: {err}\n")
        return 1
    sys.stdout.write(f"published {cmd.command_id} to {', '.join(args.topic)}\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser("command", help="write, co-sign, show and publish an operator's "
                         "signed command (e.g. a two-person resume)")
    cs = cmd.add_subparsers(dest="command_action", metavar="ACTION", required=True)
    n = cs.add_parser("new", help="write a command signed by your key")
    n.add_argument("--action", required=True, choices=[a.value for a in Action],
                   metavar="ACTION", help="what to do: " + ", ".join(a.value for a in Action))
    n.add_argument("--scope", required=True, help="e.g. firm:*, venue:okx")
    n.add_argument("--reason", required=True, help="why (the incident id)")
    n.add_argument("--key", required=True, help="your private key")
    n.add_argument("--issuer", required=True, help="your name in the trust file")
    n.add_argument("--env", required=True, help="the guard's env, e.g. prod (the audience)")
    n.add_argument("--topic", required=True, help="the commands topic (the audience)")
    n.add_argument("--ttl", type=seconds(), default=300.0,
                   help="seconds until it expires (above 0, at most a year and a day)")
    n.add_argument("--lift", action="append", default=[], metavar="ACTION",
                   help="for a resume: an action it lifts (repeatable; default all)")
    n.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="an action parameter (repeatable; a list as a,b,c), e.g. bps=25 "
                   "for widen_quotes; checked against the action's parameters before "
                   "signing (docs/commands.md)")
    n.add_argument("--seq", type=int, help="sequence number (default: next after the "
                   "issuer's last on --topic, read from --brokers)")
    n.add_argument("--brokers", help="Kafka bootstrap, to read the issuer's last seq")
    n.add_argument("--config", help=_CONFIG_HELP)
    n.add_argument("--out", required=True, help="envelope file to write")
    n.set_defaults(func=_new)
    c = cs.add_parser("cosign", help="review a command and add your signature")
    c.add_argument("file", help="the command (envelope) file to co-sign")
    c.add_argument("--key", required=True, help="your private key")
    c.add_argument("--out", help="write here instead of in place")
    c.set_defaults(func=_cosign)
    s = cs.add_parser("show", help="print a command file; with --trust, verify it")
    s.add_argument("file", help="the command (envelope) file")
    s.add_argument("--trust", help="trust.toml: also verify the command against it")
    s.add_argument("--roots", help="roots.toml for --trust: the pinned root keys")
    s.set_defaults(func=_show)
    p = cs.add_parser("publish", help="produce the envelope to topics, delivery checked")
    p.add_argument("file", help="the command (envelope) file")
    p.add_argument("--brokers", help="Kafka bootstrap host:port (or [kafka] bootstrap of "
                   "--config; one of the two is required)")
    p.add_argument("--config", help=_CONFIG_HELP)
    p.add_argument("--topic", action="append", required=True,
                   help="repeatable: the commands topic and the guard's limit-updates topic")
    p.set_defaults(func=_publish)
