"""Seed corpora for the fuzz targets, built in code from the project's test vectors.

Everything is deterministic: keys come from the fixed seeds of
``tests/signing_fixtures.py``, Ed25519 signatures are deterministic, and the
clock is the fixtures' ``T0``. The honest material (signed envelopes, audit
logs, proofs) is also what the targets' oracles compare against: a fuzzer
cannot forge Ed25519, so anything accepted must come from here.

Run: ``python tests/fuzz/seeds.py OUTDIR [TARGET ...]`` writes ``OUTDIR/<target>/``
with one file per seed (every target when none is named).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _paths
import msgspec
import msgspec.inspect as mi
import signing_fixtures as fx
from riskguard.operators.audit import AuditConfig, AuditLogic, prove, record_leaf
from riskguard.operators.signing.crypto import (
    PAYLOAD_COMMAND,
    PAYLOAD_LIMIT_UPDATE,
    PAYLOAD_TRUST,
    Signer,
    encode_envelope,
    sign_envelope,
)
from riskguard.operators.signing.trust_toml import trust_doc_to_toml
from riskguard.schemas import ALL_TYPES, Codec, Record, encode
from riskguard.schemas.audit import AuditCheckpoint, AuditRecord
from riskguard.schemas.commands import Action, LimitUpdate
from riskguard.schemas.signals import RiskAlert, Scope, ScopeKind, Severity
from riskguard.schemas.types import HEX_DIGEST_PATTERN

ROOT = _paths.TESTS.parent
T0 = fx.T0
S = fx.S
AUD = fx.AUD

# -- wire records -----------------------------------------------------------------


def _int(t: mi.IntType) -> int:
    lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
    hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else None)
    v = 7
    if lo is not None and v < lo:
        v = lo
    if hi is not None and v > hi:
        v = hi
    return v


def _float(t: mi.FloatType) -> float:
    lo = t.ge if t.ge is not None else t.gt
    hi = t.le if t.le is not None else t.lt
    v = 1.5
    if hi is not None and v >= hi:
        v = hi / 2 if hi > 0 else hi - 1.0
    if lo is not None and v <= lo:
        v = lo + 0.25
    return v


def _str(t: mi.StrType, pattern: str | None) -> str:
    pattern = t.pattern or pattern
    if pattern == HEX_DIGEST_PATTERN:
        return "ab" * 32
    if pattern:
        return "okx"
    return "x" * max(t.min_length or 0, 4)


def example_value(t: Any, full: bool) -> Any:
    """A valid Python value of msgspec type ``t``: required parts only, or every part."""
    if isinstance(t, mi.Metadata):
        if isinstance(t.type, mi.StrType):
            return _str(t.type, (t.extra_json_schema or {}).get("pattern"))
        return example_value(t.type, full)
    if isinstance(t, mi.StructType):
        kw = {f.name: example_value(f.type, full) for f in t.fields if f.required or full}
        return t.cls(**kw)
    simple: dict[type, Callable[[Any], Any]] = {
        mi.IntType: _int, mi.FloatType: _float,
        mi.StrType: lambda x: _str(x, None), mi.BoolType: lambda _x: full,
        mi.BytesType: lambda _x: b"\x00raw\xff", mi.NoneType: lambda _x: None,
        mi.LiteralType: lambda x: x.values[0], mi.EnumType: lambda x: list(x.cls)[-1],
    }
    for kind, make in simple.items():
        if isinstance(t, kind):
            return make(t)
    if isinstance(t, mi.UnionType):
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        if not full and len(members) < len(t.types):
            return None
        return example_value(members[0], full)
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return [example_value(t.item_type, full)] if full else []
    if isinstance(t, mi.TupleType):
        return tuple(example_value(x, full) for x in t.item_types)
    if isinstance(t, mi.DictType):
        if not full:
            return {}
        return {example_value(t.key_type, full): example_value(t.value_type, full)}
    if isinstance(t, mi.AnyType):
        return {"a": [1, "x", 2.5, None, True]} if full else 1
    msg = f"no example for {t!r}"
    raise NotImplementedError(msg)


def example_records() -> list[Record]:
    """Two valid records of every wire type: required fields only, and every field set.

    A variant whose own cross-field checks refuse these values is left out.
    """
    out: list[Record] = []
    for cls in ALL_TYPES:
        for full in (False, True):
            try:
                out.append(example_value(mi.type_info(cls), full))
            except (ValueError, TypeError, msgspec.ValidationError):
                continue
    return out


# -- signed envelopes ---------------------------------------------------------------


def _limit_update(n: int, *, issuer: str = "limits-admin", limit: float = 1000.0) -> LimitUpdate:
    return LimitUpdate(
        update_id=f"lu-{n}", issuer=issuer, seq=n, issued_at=T0, expires_at=T0 + 60 * S,
        audience=AUD, limit_path="counterparty.okx", kind="gross_notional", limit=limit,
        reason=f"test limit update {n}",
    )


def signed_messages() -> list[tuple[tuple[Signer, ...], str, bytes]]:
    """(signers, payload type, payload) of every honestly signed seed message."""
    venue = Scope(kind=ScopeKind.VENUE, value="binance")
    inst = Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx")
    cmds: list[tuple[tuple[Signer, ...], Any]] = [
        ((fx.ENGINE,), fx.command(1)),
        ((fx.ENGINE,), fx.command(2, action=Action.WIDEN_QUOTES, scope=venue,
                                  params={"bps": 25.0})),
        ((fx.ENGINE,), fx.command(3, action=Action.REDUCE_ONLY, scope=inst,
                                  protective_orders_allowed=True)),
        ((fx.ENGINE2,), fx.command(4, issuer="engine-2", action=Action.CANCEL_ALL,
                                   scope=venue)),
        ((fx.OP1,), fx.command(5, issuer="op-alice", action=Action.RESUME, scope=venue,
                               params={"actions": ["halt_trading"]})),
        ((fx.OP1, fx.OP2), fx.command(6, issuer="op-alice", action=Action.RESUME,
                                      scope=fx.FIRM)),
        ((fx.ENGINE,), fx.command(7, action=Action.REROUTE_ORDER_FLOW, scope=venue,
                                  params={"targets": ["okx"], "from": "binance"})),
        ((fx.ENGINE,), fx.command(8, action=Action.ALERT, scope=inst,
                                  evidence_hashes=["ab" * 32])),
        ((fx.REVOKED,), fx.command(9, issuer="engine-old")),
        ((fx.EXPIRED,), fx.command(10, issuer="engine-expired")),
        ((fx.OUTSIDER,), fx.command(11, issuer="mallory")),
        ((fx.ENGINE,), fx.command(12, ttl=10 * 3600 * S)),
    ]
    out = [(signers, PAYLOAD_COMMAND, fx.payload(cmd)) for signers, cmd in cmds]
    out.append(((fx.ADMIN,), PAYLOAD_LIMIT_UPDATE, fx.payload(_limit_update(1))))
    out.append(((fx.ADMIN,), PAYLOAD_LIMIT_UPDATE,
                fx.payload(_limit_update(2, limit=5_000_000.0))))
    return out


def envelope_seeds() -> list[bytes]:
    """Wire envelopes, honestly signed (accepted and refused ones alike)."""
    return [encode_envelope(sign_envelope(pt, payload, signers))
            for signers, pt, payload in signed_messages()]


SIGNER_SETS: tuple[tuple[tuple[Signer, ...], str], ...] = (
    ((fx.ENGINE,), PAYLOAD_COMMAND),
    ((fx.OP1, fx.OP2), PAYLOAD_COMMAND),
    ((fx.ENGINE2,), PAYLOAD_COMMAND),
    ((fx.ADMIN,), PAYLOAD_LIMIT_UPDATE),
    ((fx.OP1,), PAYLOAD_COMMAND),
)
"""Who re-signs a fuzzed payload in the ``resign`` target: its first byte picks one."""


def resign_seeds() -> list[bytes]:
    """A selector byte (index into :data:`SIGNER_SETS`) then the payload to sign."""
    out = []
    for signers, pt, payload in signed_messages():
        for i, (set_signers, set_pt) in enumerate(SIGNER_SETS):
            if set_pt == pt and set_signers[0].issuer == signers[0].issuer:
                out.append(bytes([i]) + payload)
    return out


# -- trust files ----------------------------------------------------------------------


def trust_seeds() -> list[bytes]:
    """Trust-file TOML: the fixtures' file and variants using every setting."""
    full = fx.trust_text(serial=7) + (
        "\n[max_ttl_s]\ndefault = 3600\nhalt_trading = 900\nlimit_update = 120.5\n"
    )
    dated = trust_doc_to_toml(
        [{"name": "engine-1", "public_key": fx.ENGINE.public_key.hex(), "role": "risk-engine",
          "actions": ["*"], "scopes": ["venue:*", "counterparty:okx"], "revoked": False,
          "key_id": fx.ENGINE.key_id, "comment": "rotated yearly"}],
        serial=3, two_person={"actions": ["resume", "halt_trading"], "scopes": ["firm:*"]},
    ) + "not_before = 2025-01-01T00:00:00Z\nnot_after = 2027-01-01T00:00:00+01:00\n"
    texts = [fx.trust_text(), full, dated, fx.trust_text(entries=[]), "version = 1\n"]
    return [t.encode() for t in texts]


def trust_sidecar(data: bytes) -> list[Any]:
    """The root signature list a trust file's ``.sig`` sidecar holds for ``data``."""
    return [fx.ROOTS[0].sign(PAYLOAD_TRUST, data)]


# -- guard config -----------------------------------------------------------------------


def config_seeds() -> list[bytes]:
    """The shipped guard configs, one with its playbook inlined, and small ones."""
    flows = ROOT / "dataflows"
    example = (flows / "guard.example.toml").read_text()
    demo = (flows / "demo.toml").read_text()
    playbook = (flows / "playbook.toml").read_text()
    inlined = "\n".join(line for line in example.splitlines()
                        if not line.startswith("playbook_file")) + "\n" + playbook
    small = ('env = "prod"\n[kafka]\nbootstrap = "127.0.0.1:9092"\n'
             '[tier]\nrole = "market"\nmarket_processes = 2\nindex = 1\n')
    return [t.encode() for t in (example, demo, inlined, small, "")]


# -- audit logs and proofs ----------------------------------------------------------------

AUDIT_SIGNER = fx.ENGINE
AUDIT_KEYS = {AUDIT_SIGNER.key_id: AUDIT_SIGNER.public_key}
"""The checkpoint keys the audit and proof targets trust."""


@dataclass
class AuditWorld:
    """Honest audit logs (one JSON item per line), and what their checkpoints sign."""

    logs: list[list[AuditRecord | AuditCheckpoint]] = field(default_factory=list)
    leaves: dict[str, list[bytes]] = field(default_factory=dict)
    """Every honest leaf hash, per chain, in index order."""
    checkpoints: set[bytes] = field(default_factory=set)
    """Every honest checkpoint, encoded."""
    proofs: list[dict[str, Any]] = field(default_factory=list)


def _decisions(n: int) -> list[Any]:
    venue = Scope(kind=ScopeKind.VENUE, value="okx")
    out: list[Any] = []
    for i in range(n):
        if i % 3 == 0:
            out.append(fx.command(100 + i, issued_at=T0 + i * S))
        elif i % 3 == 1:
            out.append(RiskAlert(id=f"a{i}", kind="stale_mark", ts=T0 + i * S, scope=venue,
                                 severity=Severity.WARN, reason=f"alert {i}",
                                 details={"age_s": 31.5, "feed": "primary"}))
        else:
            out.append(Codec(clock=lambda i=i: T0 + i * S).decode("market", b'{"type":'))
    return out


def audit_world() -> AuditWorld:
    """Three logs: one chain of 7 records, one of 1, and two chains interleaved."""
    world = AuditWorld()
    shapes = [("log0", 7, 3, 1), ("log1", 1, 1, 1), ("log2", 5, 2, 2)]
    for origin, n, every, chains in shapes:
        logics = [AuditLogic(f"{origin}/p{c}", AUDIT_SIGNER,
                             AuditConfig(origin=origin, checkpoint_every=every))
                  for c in range(chains)]
        items: list[AuditRecord | AuditCheckpoint] = []
        for i, decision in enumerate(_decisions(n * chains)):
            items += logics[i % chains].on_event(decision)
        for logic in logics:
            items += logic.on_eof()
        world.logs.append(items)
        for it in items:
            if isinstance(it, AuditRecord):
                world.leaves.setdefault(it.chain, []).append(record_leaf(it))
            else:
                world.checkpoints.add(encode(it))
        world.proofs += [prove(items, it.record_id) for it in items
                         if isinstance(it, AuditRecord)]
    return world


def audit_seeds(world: AuditWorld) -> list[bytes]:
    """Each honest log as an export (one item per line), and each log's first half."""
    out = []
    for items in world.logs:
        lines = [encode(it) for it in items]
        out.append(b"\n".join(lines) + b"\n")
        out.append(b"\n".join(lines[: max(1, len(lines) // 2)]))
    return out


def proof_seeds(world: AuditWorld) -> list[bytes]:
    """Every honest proof, as ``riskguard audit prove`` prints it and compact."""
    out = []
    for doc in world.proofs:
        out.append(json.dumps(doc, indent=1).encode() + b"\n")
        out.append(json.dumps(doc, separators=(",", ":")).encode())
    return out


# -- the wire codec ------------------------------------------------------------------------


def codec_seeds(world: AuditWorld) -> list[bytes]:
    """Every record type, envelopes, audit items, and a few inputs each failure class meets."""
    out = [encode(r) for r in example_records()]
    out += envelope_seeds()[:3]
    out += [encode(it) for it in world.logs[0][:4]]
    trade = (b'{"type":"trade","id":"m","venue":"okx","instrument":"BTC-USDT","ts":1,'
             b'"price":1.0,"qty":1.0,"side":"buy"}')
    out += [
        trade, trade[:-5], b"\xef\xbb\xbf" + trade, trade.replace(b"okx", b"ok\xffx"),
        trade.replace(b'"v"', b'"v"').replace(b"{", b'{"v":2,', 1),
        b"[" * 40 + b"]" * 40, b'{"type":"nope"}', b"", b"42",
        trade.replace(b"1.0,", b"1e400,", 1),
    ]
    return out


# -- dictionaries --------------------------------------------------------------------------

JSON_TOKENS = (
    "{", "}", "[", "]", ":", ",", '"', "null", "true", "false", "-0", "0.0", "1e308",
    "1e309", "-1e309", "5e-324", "9223372036854775807", "9223372036854775808",
    "18446744073709551616", "-9223372036854775809", r"\u0000", r"\ud800", r"\udc00",
    r"\"", "\\\\", r"\n", "\ufeff", "\udcff", "\udcc0\udc80", "\udced\udca0\udc80", "NaN",
    "Infinity", "*", "firm", "venue:", "counterparty.okx",
)
"""JSON syntax, numbers at the edges of int64 and float, escapes and bad UTF-8 (a lone
surrogate here stands for the byte it escapes)."""
TOML_TOKENS = (
    "[[keys]]", "[two_person]", "[max_ttl_s]", "[", "]", "=", '"', "'", '"""', "'''", "\n",
    "true", "false", "inf", "nan", "-0", "0x7f", "1_000", "1e400",
    "9223372036854775808", "2025-01-01T00:00:00Z", "2025-01-01", "00:00:00",
    "1979-05-27T00:32:00.999999-07:00", "{ }", ", ", "# ", r"\u0000", "\udcff",
    "risk-engine", "limit-admin", "operator", "*", "venue:*", "firm:*",
)


def _struct_names(t: Any, out: set[str], seen: set[Any]) -> None:
    """Every field name, tag and enum value under msgspec type ``t``."""
    if isinstance(t, mi.Metadata):
        _struct_names(t.type, out, seen)
    elif isinstance(t, mi.StructType | mi.DataclassType):
        if t.cls in seen:
            return
        seen.add(t.cls)
        tag = getattr(t, "tag", None)
        if isinstance(tag, str):
            out.add(tag)
        for f in t.fields:
            out.add(getattr(f, "encode_name", f.name))
            _struct_names(f.type, out, seen)
    elif isinstance(t, mi.EnumType):
        out.update(str(m.value) for m in t.cls)
    elif isinstance(t, mi.LiteralType):
        out.update(str(v) for v in t.values)
    elif isinstance(t, mi.UnionType):
        for m in t.types:
            _struct_names(m, out, seen)
    elif isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        _struct_names(t.item_type, out, seen)
    elif isinstance(t, mi.DictType):
        _struct_names(t.value_type, out, seen)
    elif isinstance(t, mi.TupleType):
        for m in t.item_types:
            _struct_names(m, out, seen)


def _dict_entry(token: str) -> str:
    data = token.encode("utf-8", "surrogateescape")
    body = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}"
                   for b in data)
    return f'"{body}"'


def dictionary(name: str) -> str:
    """A libFuzzer dictionary (``-dict=``) for target ``name``: the names and tokens
    its parser branches on."""
    names: set[str] = set()
    if name in ("trust", "config"):
        from riskguard.operators.signing.trust import TTL_ACTIONS

        if name == "config":
            from riskguard.dataflows.guard import GuardConfig

            _struct_names(mi.type_info(GuardConfig), names, set())
        names |= TTL_ACTIONS | {"version", "serial", "keys", "two_person", "max_ttl_s",
                                "name", "public_key", "key_id", "role", "actions", "scopes",
                                "not_before", "not_after", "revoked", "comment", "limit_cap",
                                "default", "playbook_file", "playbook"}
        tokens = [*TOML_TOKENS, *sorted(names)]
    else:
        tokens = [*JSON_TOKENS, *(f'"{n}"' for n in json_names())]
    return "".join(_dict_entry(t) + "\n" for t in tokens)


def json_names() -> list[str]:
    """The field names, tags and enum values of every wire type, proofs and envelopes."""
    names: set[str] = set()
    for cls in ALL_TYPES:
        _struct_names(mi.type_info(cls), names, set())
    names |= {"record", "leaf_hash", "index", "tree_size", "proof", "checkpoint",
              "payload_type", "payload", "signatures", PAYLOAD_COMMAND, PAYLOAD_LIMIT_UPDATE}
    return sorted(names)


def write_dictionary(path: Path, name: str) -> Path:
    """Write target ``name``'s dictionary to ``path``."""
    path.write_text(dictionary(name), encoding="ascii")
    return path


# -- writing a corpus -------------------------------------------------------------------------


def all_seeds() -> dict[str, list[bytes]]:
    """Seed inputs per target name (the names of ``tests/fuzz/targets.py``)."""
    world = audit_world()
    return {
        "codec": codec_seeds(world),
        "envelope": envelope_seeds(),
        "resign": resign_seeds(),
        "trust": trust_seeds(),
        "config": config_seeds(),
        "audit": audit_seeds(world),
        "proof": proof_seeds(world),
        "formats": formats_seeds(),
    }


def formats_seeds() -> list[bytes]:
    """A selector byte (index into the harness's format list) then a small valid file of
    that format, plain, and a few gzipped or zipped."""
    import gzip
    import io
    import zipfile

    from riskguard.connectors.formats import FORMATS

    t, us = 1_704_067_200_000, 1_704_067_200_000_000
    tardis = "exchange,symbol,timestamp,local_timestamp,"
    files = {
        "jsonl": b'{"type":"trade","id":"t","venue":"okx","instrument":"BTC-USDT","ts":1,'
                 b'"price":1.0,"qty":1.0,"side":"buy"}\n',
        "binance_klines": f"{t},100,101,99,100.5,2,{t + 59_999},200,3,1,100,0\n".encode(),
        "binance_premium_index_klines":
            f"{t},-0.0001,0.0002,-0.0003,0.0,0,{t + 59_999},0,12,0,0,0\n".encode(),
        "binance_trades": f"1,100.5,0.2,20.1,{t},True,True\n".encode(),
        "binance_agg_trades": f"1,100.5,0.2,3,5,{t},false\n".encode(),
        "binance_book_ticker": f"1,100,2,100.1,3,{t},{t}\n".encode(),
        "binance_book_depth": b"timestamp,percentage,depth,notional\n"
                              b"2024-01-01 00:00:07,-1,10,990\n2024-01-01 00:00:07,1,10,1010\n",
        "binance_funding": f"calc_time,funding_interval_hours,last_funding_rate\n{t},8,1e-4\n"
                           .encode(),
        "binance_metrics": b"create_time,symbol,sum_open_interest,sum_open_interest_value\n"
                           b"2024-01-01 00:05:00,BTCUSDT,8.5,34.5\n",
        "tardis_trades": f"{tardis}id,side,price,amount\nx,BTC,{us},{us},1,buy,1,1\n".encode(),
        "tardis_quotes": f"{tardis}ask_amount,ask_price,bid_price,bid_amount\n"
                         f"x,BTC,{us},{us},1,2,1,1\n".encode(),
        "tardis_derivative_ticker": f"{tardis}funding_timestamp,funding_rate,"
                                    "predicted_funding_rate,open_interest,last_price,"
                                    f"index_price,mark_price\nx,BTC,{us},{us},{us},1e-4,,5,1,"
                                    "1,1\n".encode(),
    }
    hour = "symbol,timestamp_s,open,high,low,close,volume\n"
    ohlcv = {  # in time order; newest first; one symbol after another; a title, 'unix'
        "ordered": hour + "A,3600,1,2,1,1,1\nB,3600,1,2,1,1,1\nA,7200,1,2,1,1,1\n",
        "newest": "date,open,high,low,close\n2024-01-03,1,2,1,1\n2024-01-02,1,2,1,1\n",
        "blocks": hour + "A,3600,1,2,1,1,1\nA,7200,1,2,1,1,1\nB,3600,1,2,1,1,1\n",
        "titled": "https://example.com\nUnix,Symbol,Open,High,Low,Close,Volume BTC,"
                  "Volume USDT,tradecount\n7200000,BTCUSDT,1,2,1,1,1,1,1\n"
                  "3600,BTCUSDT,1,2,1,1,1,1,1\n",
    }
    names = [f for f in FORMATS if f != "auto"]
    out = []
    for fmt, body in files.items():
        out.append(bytes([names.index(fmt)]) + body)
    for body in ohlcv.values():
        out.append(bytes([names.index("ohlcv_csv")]) + body.encode())
    out.append(bytes([names.index("ohlcv_csv")])
               + gzip.compress(ohlcv["blocks"].encode(), mtime=0))
    # fixed times in the gzip and zip headers: the corpus is the same every time
    out.append(bytes([names.index("binance_klines")])
               + gzip.compress(files["binance_klines"], mtime=0))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("a.csv", date_time=(1980, 1, 1, 0, 0, 0)),
                   files["binance_trades"], compress_type=zipfile.ZIP_DEFLATED)
    out.append(bytes([names.index("binance_trades")]) + buf.getvalue())
    return out


def write_corpus(outdir: Path, targets: list[str] | None = None) -> dict[str, Path]:
    """Write ``outdir/<target>/seed-<sha1>`` for each seed; return each target's folder."""
    seeds = all_seeds()
    out = {}
    for name in targets or list(seeds):
        folder = outdir / name
        folder.mkdir(parents=True, exist_ok=True)
        for data in seeds[name]:
            (folder / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)
        out[name] = folder
    return out


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write(__doc__ or "")
        return 2
    for name, folder in write_corpus(Path(argv[0]), argv[1:] or None).items():
        sys.stdout.write(f"{name}: {sum(1 for _ in folder.iterdir())} seeds in {folder}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
