"""The fuzz targets: one function per parser or verifier, bytes in, and the invariants.

Each target feeds its bytes to riskguard and checks what came back. It raises
only when an invariant breaks: an exception other than the ones the API
documents (a crash), or an acceptance it must never make (:class:`FalseAccept`).
This module has no fuzzer in it: ``tests/fuzz/targets.py`` runs these targets
under atheris, and the tests replay saved reproducers through them directly.

============  ==========================================================================
target        invariant
============  ==========================================================================
codec         ``Codec.decode`` never raises and returns a record or a dead letter; a dead
              letter it makes re-encodes within the default codec's size cap and decodes
              to itself; a decoded record re-encodes and decodes to an equal record. The
              input padded with spaces to the size cap is decoded and checked too.
envelope      ``decode_envelope`` + ``TrustStore.verify`` raise only ``VerificationError``;
              an accepted envelope carries a payload the seeds signed, and one of its
              signatures verifies (checked here with ``cryptography`` alone) under a trust
              file key allowed to sign that action on that scope.
resign        The fuzzer writes the payload and a real authorized key signs it: verify
              raises only ``VerificationError``, and an accepted payload reads the same to
              msgspec and to Python's ``json`` (the first of a repeated key): every field.
trust         ``TrustStore.from_signed_bytes`` (a real root signature over the fuzzed
              bytes) and ``parse_trust`` raise only ``ConfigError`` or ``TrustError``.
config        ``load_guard_config`` raises only ``ConfigError`` (or another riskguard
              error).
audit         ``read_jsonl`` + ``verify_log`` raise only ``AuditError``; an accepted log
              holds only honest records and checkpoints.
proof         ``check_proof`` raises only ``AuditError``, and accepts only a proof whose
              record, checkpoint, index, size and path are the honest ones.
formats       A historical file (the first byte picks its format, the rest is the file,
              plain, gzipped or zipped) planned and read as a replay reads it (an OHLCV
              file out of time order through its time index): opening raises only
              ``ConfigError``; reading never raises and gives only wire records and dead
              letters that fit the dead-letter cap.
============  ==========================================================================
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _paths
import msgspec
import seeds
import signing_fixtures as fx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from riskguard.connectors.broker import pid_alive
from riskguard.connectors.formats import FORMATS, core
from riskguard.connectors.replay import ReplayFile
from riskguard.operators.audit import (
    check_proof,
    inclusion_proof,
    read_jsonl,
    record_leaf,
    verify_log,
)
from riskguard.operators.signing.crypto import (
    PAYLOAD_COMMAND,
    PAYLOAD_LIMIT_UPDATE,
    decode_envelope,
    pae,
    sign_envelope,
)
from riskguard.operators.signing.trust import (
    ROLE_PAYLOADS,
    Role,
    TrustStore,
    limit_scope_label,
    parse_trust,
)
from riskguard.schemas import Codec, Record, encode
from riskguard.schemas.audit import AuditCheckpoint, AuditRecord, DeadLetter
from riskguard.schemas.codec import DEFAULT_MAX_BYTES
from riskguard.schemas.commands import LimitUpdate, MitigationCommand
from riskguard.schemas.json_limits import check_json_depth

from riskguard.errors import (
    AuditError,
    ConfigError,
    RiskguardError,
    TrustError,
    VerificationError,
)

T0 = seeds.T0


class FalseAccept(AssertionError):
    """A verifier accepted what it must refuse, or read bytes otherwise than it should."""


# -- codec -------------------------------------------------------------------------------

_codec = Codec(clock=lambda: T0)
_default_codec = Codec()
_roundtrip_codec = Codec(max_bytes=1 << 30)
"""Re-reads a decoded record's encoding: the round trip is about fidelity, not size."""


def fuzz_codec(data: bytes) -> None:
    """Decode; never raise; dead letters fit and read back; records round-trip.

    Each input is also decoded padded with spaces to exactly the size cap (the same
    JSON, if it was JSON): a dead letter must still fit, however much raw it carries.
    """
    _check_decode(data)
    if len(data) < DEFAULT_MAX_BYTES:
        _check_decode(data + b" " * (DEFAULT_MAX_BYTES - len(data)))


def _check_decode(data: bytes) -> None:
    out = _codec.decode("fuzz.market", data, partition=0, offset=7)
    if not isinstance(out, Record):
        raise TypeError(f"decode returned {type(out).__name__}, not a record")
    wire = encode(out)
    made_here = (isinstance(out, DeadLetter) and out.ts == T0 and out.raw_len == len(data)
                 and out.raw_sha256 == hashlib.sha256(data).hexdigest())
    if made_here:
        if len(wire) > DEFAULT_MAX_BYTES:
            raise FalseAccept(f"dead letter encodes to {len(wire)} bytes; the default "
                              f"codec reads at most {DEFAULT_MAX_BYTES}")
        again = _default_codec.decode("fuzz.dead", wire)
    else:
        again = _roundtrip_codec.decode("fuzz.market", wire)
    if again != out:
        raise FalseAccept(f"{type(out).__name__} does not survive encode and decode: "
                          f"{out!r:.300} became {again!r:.300}")


# -- envelopes ---------------------------------------------------------------------------

_TRUST = fx.trust_store()
_HONEST = {(pt, payload) for _signers, pt, payload in seeds.signed_messages()}
_TRUST_ENTRIES = fx.key_entries()


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _json_view(payload: bytes) -> Any:
    """The payload as Python's json reads it, the first of a repeated key kept."""
    return json.loads(payload, object_pairs_hook=_first_wins)


def _label(msg: MitigationCommand | LimitUpdate) -> tuple[str, list[str]]:
    """The action, and every scope label a signer must be allowed: the command's, a
    reroute's venues and a hedge's instrument."""
    if isinstance(msg, MitigationCommand):
        p = msg.params
        named = [f"venue:{v}" for v in [*p.get("targets", []), *[p[k] for k in ("from",)
                                                                if k in p]]]
        if "hedge_instrument" in p:
            named.append(f"instrument:{p['hedge_instrument']}")
        return msg.action.value, [msg.scope.label(), *named]
    return "limit_update", [limit_scope_label(msg.limit_path)]


def _independently_authorized(payload_type: str, payload: bytes,
                              sigs: list[Any], msg: MitigationCommand | LimitUpdate) -> bool:
    """Does a signature verify (plain ``cryptography``) under a trust-file key that is
    valid at T0, bound to the issuer, and allowed this payload type, action and scope?"""
    action, labels = _label(msg)
    message = pae(payload_type, payload)
    for entry in _TRUST_ENTRIES:
        if entry.get("revoked") or entry["name"] != msg.issuer:
            continue
        if not entry.get("not_before", 0) <= T0 < entry.get("not_after", 1 << 63):
            continue
        if payload_type not in ROLE_PAYLOADS[Role(entry["role"])]:
            continue
        if "*" not in entry["actions"] and action not in entry["actions"]:
            continue
        if not all(any(fnmatch.fnmatchcase(label, p) for p in entry["scopes"])
                   for label in labels):
            continue
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry["public_key"]))
        for s in sigs:
            try:
                key.verify(s.sig, message)
            except InvalidSignature:
                continue
            return True
    return False


_VERIFY_POOL = ThreadPoolExecutor(2, thread_name_prefix="verify")


def fuzz_envelope(data: bytes) -> None:
    """Parse and verify wire bytes; only refusals; nothing accepted that was not signed.
    Half the inputs have their first signature checked ahead on threads, as the
    subscriber checks a batch's."""
    try:
        env = decode_envelope(data)
        expected = (PAYLOAD_LIMIT_UPDATE if env.payload_type == PAYLOAD_LIMIT_UPDATE
                    else PAYLOAD_COMMAND)
        if data[-1] & 1:
            _TRUST.check_ahead(expected, [(env.payload, env.signatures)], _VERIFY_POOL, 2)
        verified = _TRUST.verify(env, expected_payload_type=expected, audience=fx.AUD,
                                 now_ns=T0)
    except VerificationError as err:
        if not err.reason:
            raise FalseAccept("a refusal with no reason") from err
        return
    if (env.payload_type, env.payload) not in _HONEST:
        raise FalseAccept(f"accepted a payload nobody signed: {env.payload[:200]!r}")
    if not _independently_authorized(env.payload_type, env.payload, env.signatures,
                                     verified.message):
        raise FalseAccept("accepted an envelope no authorized key signed: "
                          f"{verified.message!r:.300}")


def _differential(payload: bytes, msg: MitigationCommand | LimitUpdate) -> str | None:
    """None if Python's json reads ``payload`` to the same message as msgspec did.

    json's values (the first of a repeated key) are typed with ``msgspec.convert``,
    which has no JSON parser in it, so a difference is one in reading the bytes.
    """
    try:
        view = _json_view(payload)
    except (ValueError, RecursionError) as err:
        return f"Python's json cannot read an accepted payload: {err}"
    try:
        theirs = msgspec.convert(view, type(msg))
    except msgspec.ValidationError as err:
        return f"what Python's json reads is not a {type(msg).__name__}: {err}"
    if theirs == msg:
        return None
    for f in msgspec.structs.fields(msg):
        ours_v, theirs_v = getattr(msg, f.name), getattr(theirs, f.name)
        if ours_v != theirs_v:
            return f"field {f.encode_name!r}: msgspec read {ours_v!r:.200}, json {theirs_v!r:.200}"
    return "the messages differ"


def fuzz_resign(data: bytes) -> None:
    """A real authorized key signs the fuzzed payload; accepted means read one way."""
    if not data:
        return
    signers, payload_type = seeds.SIGNER_SETS[data[0] % len(seeds.SIGNER_SETS)]
    payload = data[1:]
    env = sign_envelope(payload_type, payload, signers)
    try:
        verified = _TRUST.verify(env, expected_payload_type=payload_type, audience=fx.AUD,
                                 now_ns=T0)
    except VerificationError as err:
        if not err.reason:
            raise FalseAccept("a refusal with no reason") from err
        return
    msg = verified.message
    want = MitigationCommand if payload_type == PAYLOAD_COMMAND else LimitUpdate
    if not isinstance(msg, want):
        raise FalseAccept(f"accepted a {type(msg).__name__} as {payload_type}")
    problem = _differential(payload, msg)
    if problem is not None:
        raise FalseAccept(f"parser differential in an accepted payload: {problem}")


# -- trust files -------------------------------------------------------------------------

_ROOTS = fx.root_set(fx.ROOTS[:1])


def fuzz_trust(data: bytes) -> None:
    """Root-signed bytes and their text: only ConfigError or TrustError."""
    with contextlib.suppress(ConfigError, TrustError):
        TrustStore.from_signed_bytes(data, seeds.trust_sidecar(data), _ROOTS)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        # bad bytes as lone surrogates: text no file read gives, parsed all the same
        with contextlib.suppress(ConfigError, TrustError):
            parse_trust(data.decode("utf-8", "surrogateescape"))


# -- guard config --------------------------------------------------------------------------


@functools.cache
def _config_dir() -> Path:
    """A folder of this process's own (in memory where it can be), holding the shipped
    playbook beside the fuzzed config. libFuzzer ends the process without running
    Python's exit handlers, so each process first removes the folders of processes
    that are gone."""
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    for old in parent.glob("riskguard-fuzz-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = parent / f"riskguard-fuzz-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    shutil.copy(seeds.ROOT / "dataflows" / "playbook.toml", folder / "playbook.toml")
    return folder




@functools.cache
def _config_loader() -> Callable[[Path], Any]:
    """``load_guard_config``, imported on first use: the guard's flow pulls in most of
    riskguard, which only this target needs (and instrumenting it takes seconds)."""
    from riskguard.dataflows.guard import load_guard_config

    return load_guard_config


def fuzz_config(data: bytes) -> None:
    """Load a guard config file holding the bytes: only riskguard errors."""
    path = _config_dir() / "guard.toml"
    path.write_bytes(data)
    with contextlib.suppress(RiskguardError):
        _config_loader()(path)


# -- audit logs and proofs -----------------------------------------------------------------

_WORLD = seeds.audit_world()


def _honest_record(rec: AuditRecord) -> bool:
    leaves = _WORLD.leaves.get(rec.chain, [])
    return rec.index < len(leaves) and leaves[rec.index] == record_leaf(rec)


def fuzz_audit(data: bytes) -> None:
    """Read and verify an export: only AuditError; accepted means honest."""
    try:
        items = read_jsonl(data.splitlines())
        verify_log(items, seeds.AUDIT_KEYS)
    except AuditError:
        return
    for it in items:
        if isinstance(it, AuditRecord) and not _honest_record(it):
            raise FalseAccept(f"accepted a record no checkpoint signed: {it!r:.300}")
        if isinstance(it, AuditCheckpoint) and encode(it) not in _WORLD.checkpoints:
            raise FalseAccept(f"accepted a checkpoint nobody signed: {it!r:.300}")


def _honest_proof(doc: Mapping[str, Any]) -> str | None:
    """None if every bound field of an accepted proof is the honest one; else which not."""
    rec = msgspec.convert(doc["record"], AuditRecord)
    cp = msgspec.convert(doc["checkpoint"], AuditCheckpoint)
    if not _honest_record(rec):
        return "record"
    if encode(cp) not in _WORLD.checkpoints or cp.origin != rec.chain:
        return "checkpoint"
    leaves = _WORLD.leaves[rec.chain]
    if doc["index"] != rec.index or doc["tree_size"] != cp.size or cp.size > len(leaves):
        return "index or tree_size"
    if doc["leaf_hash"] != leaves[rec.index].hex():
        return "leaf_hash"
    if doc["proof"] != [h.hex() for h in inclusion_proof(rec.index, leaves[: cp.size])]:
        return "proof path"
    return None


def fuzz_proof(data: bytes) -> None:
    """Check a proof document: only AuditError; accepted means every bound field honest."""
    if check_json_depth(data) is not None:
        return  # refused before parsing by ``riskguard audit check-proof``
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return  # not JSON: the command line refuses it before check_proof
    try:
        check_proof(doc, seeds.AUDIT_KEYS)
    except AuditError:
        return
    wrong = _honest_proof(doc)
    if wrong is not None:
        raise FalseAccept(f"accepted a proof whose {wrong} is not the honest one")


def broken_for_tests(data: bytes) -> None:
    """A target that breaks its invariant on every input (the runner's own tests)."""
    raise FalseAccept(f"accepted {data[:20]!r}")


# -- a JSON-aware mutator ------------------------------------------------------------------


class _Obj(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs, in order, repeats kept."""


_FIELD_NAMES = seeds.json_names()
_EDGE_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1.5, -0.0, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 1e308,
    5e-324, "", "x" * 65, "x" * 4097, "\ud800", "a\nb", "a\u2028b", "*", "okx", "firm",
    "firm:*", "venue:*", "ab" * 32, "AB" * 32, [], {}, [[[[[]]]]],
)


def _nodes(v: Any, out: list[tuple[Any, int]]) -> None:
    """Every (container, position) holding a value, depth first."""
    if isinstance(v, _Obj):
        for i, (_k, x) in enumerate(v):
            out.append((v, i))
            _nodes(x, out)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out.append((v, i))
            _nodes(x, out)


def _get(c: Any, i: int) -> Any:
    return c[i][1] if isinstance(c, _Obj) else c[i]


def _set(c: Any, i: int, value: Any) -> None:
    if isinstance(c, _Obj):
        c[i] = (c[i][0], value)
    else:
        c[i] = value


def _dump(v: Any, rnd: Any, seps: tuple[str, ...]) -> str:
    sep = rnd.choice(seps)
    if isinstance(v, _Obj):
        return "{" + f",{sep}".join(f"{_dump(k, rnd, seps)}:{sep}{_dump(x, rnd, seps)}"
                                    for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + f",{sep}".join(_dump(x, rnd, seps) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=rnd.random() < 0.3)
    if isinstance(v, float) and rnd.random() < 0.2:
        return repr(v).replace("e+", "E")
    return json.dumps(v)


def mutate_json(data: bytes, seed: int, *, newlines: bool = True) -> bytes | None:
    """``data`` (JSON) changed in its structure, or None if it is not JSON.

    One change per call, picked by ``seed``: a value replaced by an edge value or by
    another value of the document, a key dropped, repeated with another value, or
    added, two values swapped, and the result written with other spacing and escapes.
    Deterministic for a given ``seed``. With ``newlines`` false the output stays on
    one line (a line of JSON lines).
    """
    import random

    try:
        doc = json.loads(data, object_pairs_hook=_Obj)
    except (ValueError, RecursionError):
        return None
    rnd = random.Random(seed)
    nodes: list[tuple[Any, int]] = []
    _nodes(doc, nodes)
    op = rnd.randrange(6)
    if nodes:
        c, i = rnd.choice(nodes)
        if op == 0:
            _set(c, i, rnd.choice(_EDGE_VALUES))
        elif op == 1:
            _set(c, i, json.loads(json.dumps(_get(*rnd.choice(nodes))), object_pairs_hook=_Obj))
        elif op == 2:
            del c[i]
        elif op == 3 and isinstance(c, _Obj):
            c.insert(rnd.randrange(len(c) + 1), (c[i][0], rnd.choice(_EDGE_VALUES)))
        elif op == 4:
            c2, i2 = rnd.choice(nodes)
            a, b = _get(c, i), _get(c2, i2)
            _set(c, i, b)
            _set(c2, i2, a)
        else:
            objs = [x for x, _ in nodes if isinstance(x, _Obj)]
            if objs:
                rnd.choice(objs).append((rnd.choice(_FIELD_NAMES), rnd.choice(_EDGE_VALUES)))
    seps = ("", "", " ", "\n") if newlines else ("", "", " ")
    return _dump(doc, rnd, seps).encode("utf-8", "surrogatepass")


def _one_line(data: bytes, seed: int) -> bytes | None:
    """:func:`mutate_json` applied to one line of a JSON-lines input."""
    lines = data.split(b"\n")
    k = seed % len(lines)
    new = mutate_json(lines[k], seed // len(lines), newlines=False)
    if new is None:
        return None
    return b"\n".join([*lines[:k], new, *lines[k + 1:]])


def _after_first_byte(data: bytes, seed: int) -> bytes | None:
    new = mutate_json(data[1:], seed)
    return None if new is None or not data else data[:1] + new


MUTATORS: dict[str, Callable[[bytes, int], bytes | None]] = {
    "codec": mutate_json, "envelope": mutate_json, "resign": _after_first_byte,
    "audit": _one_line, "proof": mutate_json,
}
"""Structure-aware mutators of the JSON targets (``targets.py`` mixes them with
libFuzzer's own byte-level mutations)."""


# -- running without stopping ------------------------------------------------------------

PACKAGE_DIRS = tuple(str(_paths.TESTS.parent / d) + os.sep
                     for d in ("riskguard", "operators", "connectors", "dataflows", "schemas"))


def _signature(err: BaseException) -> str:
    """What tells one failure from another: its type and the riskguard line that raised it
    (the innermost line anywhere if none)."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if f.filename.startswith(PACKAGE_DIRS)]
    where = (ours or frames)[-1] if frames else None
    at = f"{Path(where.filename).name}:{where.lineno}" if where else "?"
    return f"{type(err).__name__}@{at}"


def keep_going(name: str, target: Callable[[bytes], None],
               folder: Path) -> Callable[[bytes], None]:
    """``target`` recording each broken invariant in ``folder`` instead of raising.

    The first input of each distinct failure (:func:`_signature`) is saved as
    ``<name>-<kind>-<hash>``; every occurrence is a line of ``findings.tsv``
    (target, kind, signature, message), kind ``crash`` or ``false_accept``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()

    def run(data: bytes) -> None:
        try:
            target(data)
        except Exception as err:
            kind = "false_accept" if isinstance(err, FalseAccept) else "crash"
            sig = _signature(err)
            if sig not in seen:
                seen.add(sig)
                path = folder / f"{name}-{kind}-{hashlib.sha1(sig.encode()).hexdigest()[:12]}"
                if not path.exists():
                    path.write_bytes(data)
            message = " ".join(str(err).split())[:300]
            with (folder / "findings.tsv").open("a", encoding="utf-8") as fh:
                fh.write(f"{name}\t{kind}\t{sig}\t{message}\n")

    return run


# -- historical file formats -----------------------------------------------------------

_FORMATS = [f for f in FORMATS if f != "auto"]
_format_dir: list[Path] = []


def fuzz_formats(data: bytes) -> None:
    """Read ``data[1:]`` as a file of format ``data[0]``: only records and dead letters."""
    if not data:
        return
    if not _format_dir:
        _format_dir.append(Path(tempfile.mkdtemp(prefix="rg-fuzz-formats-")))
    fmt = _FORMATS[(data[0] & 0x7F) % len(_FORMATS)]
    path = _format_dir[0] / "input.csv"
    path.write_bytes(data[1:])
    caps = (core.MAX_LINE_BYTES, core.MAX_DECOMPRESSED_BYTES, core.MAX_TEMP_BYTES)
    if data[0] & 0x80:  # the bounded readers' caps within reach of a small input
        core.MAX_LINE_BYTES, core.MAX_DECOMPRESSED_BYTES, core.MAX_TEMP_BYTES = 48, 512, 512
    try:
        # planned as a replay plans it: an OHLCV file out of time order is read through
        # its time index; the instrument is given, as a Binance dump's name would give it
        reader = ReplayFile(path, format=fmt, instrument="BTCUSDT").planned().open(0, None)
    except ConfigError:
        core.MAX_LINE_BYTES, core.MAX_DECOMPRESSED_BYTES, core.MAX_TEMP_BYTES = caps
        return  # a file-level refusal (an unreadable zip): documented
    try:
        for _line, _offset, item in reader.lines():
            for rec in item if isinstance(item, list) else [item]:
                if not isinstance(rec, Record):
                    raise AssertionError(f"{fmt} gave {type(rec).__name__}, not a record")
                if isinstance(rec, DeadLetter) and len(encode(rec)) > DEFAULT_MAX_BYTES:
                    raise AssertionError(f"{fmt}: a dead letter of {len(encode(rec))} bytes")
    finally:
        reader.close()
        core.MAX_LINE_BYTES, core.MAX_DECOMPRESSED_BYTES, core.MAX_TEMP_BYTES = caps


TARGETS: dict[str, Callable[[bytes], None]] = {
    "codec": fuzz_codec,
    "envelope": fuzz_envelope,
    "resign": fuzz_resign,
    "trust": fuzz_trust,
    "config": fuzz_config,
    "audit": fuzz_audit,
    "proof": fuzz_proof,
    "formats": fuzz_formats,
}
"""Every target, by the name ``tests/fuzz/targets.py`` takes."""


def prepare(name: str) -> None:
    """Import what target ``name`` uses (its runner instruments these imports)."""
    if name == "config":
        _config_loader()
