"""``riskguard audit verify|prove|check-proof``: check a Merkle audit log and its proofs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from riskguard.connectors.subscriber import read_topic_bytes
from riskguard.errors import AuditError, ConfigError
from riskguard.operators.audit import AuditItem, check_proof, prove, read_jsonl, verify_log
from riskguard.operators.crypto import VerifyKey, load_public_key
from riskguard.operators.trust import RootSet, TrustStore


def _keys(args: argparse.Namespace) -> dict[str, VerifyKey] | Callable[[str], VerifyKey]:
    if args.trust:
        if not args.roots:
            raise ConfigError("--roots", "a roots.toml alongside --trust")
        store = TrustStore.load(args.trust, RootSet.load(args.roots))
        return store.checkpoint_key
    if args.pubkey:
        ks = [load_public_key(p) for p in args.pubkey]
        return {k.key_id: k for k in ks}
    raise ConfigError("--trust/--pubkey", "the keys that sign checkpoints")


def _read(args: argparse.Namespace) -> list[AuditItem]:
    if args.topic:
        return read_jsonl(read_topic_bytes(args.brokers, args.topic))
    return read_jsonl(Path(args.file).read_bytes().splitlines())


def _verify(args: argparse.Namespace) -> int:
    keys = _keys(args)
    try:
        items = _read(args)
        expected = dict(kv.split("=", 1) for kv in args.expect_size or [])
        report = verify_log(items, keys, allow_unattested_tail=args.allow_tail,
                            expected_sizes={k: int(v) for k, v in expected.items()})
    except AuditError as err:
        sys.stdout.write(f"FAIL {err}\n")
        return 1
    for name, r in sorted(report.items()):
        sys.stdout.write(f"ok   chain {name}: {r.records} records, {r.checkpoints} signed "
                         f"checkpoints, {r.attested} attested\n")
    return 0


def _prove(args: argparse.Namespace) -> int:
    try:
        doc = prove(_read(args), args.record_id)
    except AuditError as err:
        sys.stdout.write(f"FAIL {err}\n")
        return 1
    sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    return 0


def _check_proof(args: argparse.Namespace) -> int:
    doc = json.loads(Path(args.proof).read_text())
    try:
        check_proof(doc, _keys(args))
    except AuditError as err:
        sys.stdout.write(f"FAIL {err}\n")
        return 1
    sys.stdout.write(f"ok   record {doc['record']['record_id']} is leaf {doc['index']} of "
                     f"the signed tree of size {doc['tree_size']}\n")
    return 0


def _source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="JSONL export (one record or checkpoint per line)")
    src.add_argument("--topic", help="audit topic to read from the beginning")
    p.add_argument("--brokers", default="127.0.0.1:9092")


def _key_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", help="trust.toml naming the checkpoint keys")
    p.add_argument("--roots", help="roots.toml for --trust")
    p.add_argument("--pubkey", action="append", help="checkpoint public key file (repeatable)")


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="verify the audit log and prove inclusion")
    a = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = a.add_parser("verify", help="check every record, checkpoint and consistency proof")
    _source(v)
    _key_args(v)
    v.add_argument("--allow-tail", action="store_true",
                   help="accept records after the last checkpoint (a live log)")
    v.add_argument("--expect-size", action="append", metavar="CHAIN=N",
                   help="minimum records per chain (detects truncation at a checkpoint)")
    v.set_defaults(func=_verify)
    p = a.add_parser("prove", help="print an inclusion proof for one record")
    p.add_argument("record_id")
    _source(p)
    p.set_defaults(func=_prove)
    c = a.add_parser("check-proof", help="check a proof printed by 'audit prove'")
    c.add_argument("proof")
    _key_args(c)
    c.set_defaults(func=_check_proof)
