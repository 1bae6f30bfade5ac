"""``riskguard audit verify|prove|check-proof``: check a Merkle audit log and its proofs.

Exit codes, for every action:

- 0: the log (or proof) verified;
- 1: it did not, there was nothing to verify (no records, unless
  ``--allow-empty``), or the log or proof could not be read (a missing file
  or topic, an unreachable broker, a line that is not an audit item): one
  line starting ``FAIL`` on stdout says which;
- 2: the command line or a key or trust file is wrong (one line on stderr).

See docs/audit.md for what each action checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from riskguard.connectors.audit_tail import read_items
from riskguard.errors import AuditError, BrokerError, ConfigError
from riskguard.operators.audit import (
    AuditItem,
    ChainReport,
    KeyLookup,
    check_proof,
    prove,
    read_jsonl,
    verify_log,
)
from riskguard.operators.signing.crypto import VerifyKey, load_public_key
from riskguard.operators.signing.trust import RootSet, TrustStore
from riskguard.schemas.audit import AuditRecord
from riskguard.schemas.json_limits import check_json_depth

DEFAULT_BROKERS = "127.0.0.1:9092"


def _keys(args: argparse.Namespace) -> tuple[dict[str, VerifyKey] | KeyLookup,
                                            Callable[[str], str | None] | None]:
    """The checkpoint keys, and (from a trust file) the name each speaks for."""
    if args.trust:
        if not args.roots:
            raise ConfigError("--roots", "a roots.toml alongside --trust")
        store = TrustStore.load(args.trust, RootSet.load(args.roots))
        return store.checkpoint_key, store.name_of
    if args.pubkey:
        ks = [load_public_key(p) for p in args.pubkey]
        return {k.key_id: k for k in ks}, None
    raise ConfigError("--trust/--pubkey", "the keys that sign checkpoints")


def _issuers(args: argparse.Namespace, names: Callable[[str], str | None] | None
             ) -> dict[str, str] | None:
    """Replica id -> the trust-file name that signs its chains: ``--issuer`` flags, else
    ``[replica] issuers`` of ``--config``; None if neither gives any."""
    out: dict[str, str] = {}
    for kv in getattr(args, "issuer", None) or []:
        replica, _, name = kv.partition("=")
        if not replica or not name:
            raise ConfigError("--issuer", "REPLICA=NAME (a replica id and its key's name in "
                              "the trust file)", kv)
        out[replica] = name
    config = getattr(args, "config", None)
    if not out and config:
        from riskguard.config import read_toml  # noqa: PLC0415

        listed = read_toml(config).get("replica", {}).get("issuers", {})
        if isinstance(listed, dict):
            out = {str(k): str(v) for k, v in listed.items()}
    if out and names is None:
        raise ConfigError("--issuer", "--trust (the names are the trust file's)",
                          "--pubkey")
    return out or None


def _source(args: argparse.Namespace) -> str:
    return f"topic {args.topic!r}" if args.topic else f"file {args.file!r}"


def _read(args: argparse.Namespace) -> list[AuditItem]:
    """The log's items; ``AuditError`` if it cannot be read or holds anything else."""
    if args.topic:
        from riskguard.cli import reach_kafka  # noqa: PLC0415  (the CLI module imports this one)

        try:
            from riskguard.config import common_config  # noqa: PLC0415

            kafka = common_config(args.config, brokers=args.brokers).kafka
            reach_kafka(kafka, f"--brokers HOST:PORT (default {DEFAULT_BROKERS}, or [kafka] "
                        "of --config)")
            return read_items(kafka, args.topic, strict=True)
        except BrokerError as err:
            msg = f"cannot read {_source(args)}: {err}"
            raise AuditError(msg) from None
    try:
        raw = Path(args.file).read_bytes()
    except OSError as err:
        msg = f"cannot read {_source(args)}: {err.strerror or err}"
        raise AuditError(msg) from None
    return read_jsonl(raw.splitlines())


def _expected_sizes(pairs: list[str] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for kv in pairs or []:
        chain, _, n = kv.partition("=")
        if not chain or not n.isascii() or not n.isdigit():
            raise ConfigError("--expect-size", "CHAIN=N with N a whole number", kv)
        out[chain] = int(n)
    return out


def _verify(args: argparse.Namespace) -> int:
    keys, signer_of = _keys(args)
    issuers = _issuers(args, signer_of)
    expected = _expected_sizes(args.expect_size)
    try:
        items = _read(args)
        if not any(isinstance(it, AuditRecord) for it in items) and not args.allow_empty:
            msg = (f"empty: {_source(args)} holds no audit records; nothing was verified "
                   "(--allow-empty accepts an empty log)")
            raise AuditError(msg)
        report = verify_log(items, keys, allow_unattested_tail=args.allow_tail,
                            expected_sizes=expected, signer_of=signer_of, issuers=issuers)
    except AuditError as err:
        sys.stdout.write(f"FAIL {err}\n")
        return 1
    if not report:
        sys.stdout.write(f"ok   {_source(args)} holds no audit records (--allow-empty)\n")
    for name, r in sorted(report.items()):
        sys.stdout.write(f"ok   chain {name}: {r.records} records, {r.checkpoints} signed "
                         f"checkpoints, {r.attested} attested{_unsigned(r)}\n")
    return 0


def _unsigned(r: ChainReport) -> str:
    """What of a chain no checkpoint vouches for (accepted with --allow-tail)."""
    if not r.checkpoints and r.records:
        return "; NO signed checkpoint: none of its records is verified (--allow-tail)"
    if r.records > r.attested:
        return (f"; {r.records - r.attested} after the last checkpoint, not verified "
                "(--allow-tail)")
    return ""


def _prove(args: argparse.Namespace) -> int:
    try:
        doc = prove(_read(args), args.record_id)
    except AuditError as err:
        sys.stdout.write(f"FAIL {err}\n")
        return 1
    sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    return 0


def _load_proof(path: str) -> Any:
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        msg = f"cannot read proof file {path!r}: {err.strerror or err}"
        raise AuditError(msg) from None
    too_deep = check_json_depth(raw)
    if too_deep is not None:
        msg = f"malformed: proof file {path!r}: {too_deep}"
        raise AuditError(msg)
    try:
        return json.loads(raw)
    except Exception as err:  # not JSON, not UTF-8, nested past the recursion limit, ...
        why = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        msg = f"malformed: proof file {path!r} is not JSON ({why})"
        raise AuditError(msg) from None


def _check_proof(args: argparse.Namespace) -> int:
    keys, names = _keys(args)
    issuers = _issuers(args, names)
    try:
        doc = _load_proof(args.proof)
        check_proof(doc, keys, signer_of=names, issuers=issuers)
    except AuditError as err:
        sys.stdout.write(f"FAIL {err}\n")
        return 1
    rec, cp = doc["record"], doc["checkpoint"]
    sys.stdout.write(f"ok   record {rec['record_id']} is leaf {doc['index']} of chain "
                     f"{rec['chain']}'s tree of size {doc['tree_size']}, signed by key "
                     f"{cp['key_id']}\n")
    return 0


def _source_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="JSONL export (one record or checkpoint per line)")
    src.add_argument("--topic", help="audit topic to read from the beginning")
    p.add_argument("--brokers", help=f"Kafka bootstrap for --topic (default "
                   f"{DEFAULT_BROKERS}, or [kafka] bootstrap of --config)")
    p.add_argument("--config", help="a TOML config whose [kafka] (TLS, SASL) --topic is "
                   "read with, e.g. guard.toml; --brokers changes only its address")


def _key_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", help="trust.toml naming the checkpoint keys")
    p.add_argument("--roots", help="roots.toml for --trust")
    p.add_argument("--pubkey", action="append", help="checkpoint public key file (repeatable)")
    p.add_argument("--issuer", action="append", metavar="REPLICA=NAME",
                   help="the trust-file name whose key signs replica REPLICA's chains "
                   "(repeatable; default: [replica] issuers of --config). Given, a "
                   "replica's chain signed by another key, or of a replica not named, fails")


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="verify the audit log and prove inclusion")
    a = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = a.add_parser("verify", help="check every record, checkpoint and consistency proof")
    _source_args(v)
    _key_args(v)
    v.add_argument("--allow-tail", action="store_true",
                   help="accept records after the last checkpoint (a live log)")
    v.add_argument("--allow-empty", action="store_true",
                   help="accept a log with no records (else an empty log fails)")
    v.add_argument("--expect-size", action="append", metavar="CHAIN=N",
                   help="minimum records a signed checkpoint attests per chain (detects "
                   "truncation at a checkpoint)")
    v.set_defaults(func=_verify)
    p = a.add_parser("prove", help="print an inclusion proof for one record")
    p.add_argument("record_id", help="the record to prove, e.g. riskguard/p0:17")
    _source_args(p)
    p.set_defaults(func=_prove)
    c = a.add_parser("check-proof", help="check a proof printed by 'audit prove'")
    c.add_argument("proof", help="the proof file (JSON) that audit prove printed")
    _key_args(c)
    c.set_defaults(func=_check_proof)
