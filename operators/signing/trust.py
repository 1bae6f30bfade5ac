"""The trust file: which keys may sign what, and the verifier that enforces it.

The trust file is TOML (an annotated example: docs/security.md). Its exact bytes are
signed by root keys (payload type :data:`~riskguard.operators.signing.crypto.PAYLOAD_TRUST`)
in a sidecar ``<trust file>.sig`` (a JSON list of ``{"key_id", "sig"}``); loading checks
that a threshold of distinct root keys, pinned out of band in ``roots.toml``, signed the
bytes *before* the TOML is parsed.

Authorization always comes from this file; an envelope's ``key_id`` is only a hint for
which key to try. Keys that share a ``name`` belong to one person (rotation adds the new
key under the old name) and count as one approval.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from riskguard.operators.signing.crypto import (
    MAX_SIGNATURES,
    PAYLOAD_ACK,
    PAYLOAD_AUDIT_CHECKPOINT,
    PAYLOAD_COMMAND,
    PAYLOAD_LIMIT_UPDATE,
    PAYLOAD_TRUST,
    SIGNATURE_LEN,
    Reason,
    Signer,
    VerifyKey,
    check_signature_shapes,
    pae,
    pae_prefix,
    rejection,
)
from riskguard.schemas.action_params import check_params, param_scopes
from riskguard.schemas.commands import (
    Action,
    Audience,
    ExecutionAck,
    LimitUpdate,
    MitigationCommand,
    Signature,
    command_scope_problem,
    scope_is_wide,
)
from riskguard.schemas.json_limits import duplicate_key_problem
from riskguard.schemas.signals import Scope, ScopeKind, parse_limit_path

from riskguard.atomic import write_atomic
from riskguard.errors import ConfigError, TrustError, VerificationError
from riskguard.validation import config_error, did_you_mean

NS_PER_S = 1_000_000_000
DEFAULT_LEEWAY_NS = 10 * NS_PER_S
LIMIT_UPDATE_ACTION = "limit_update"
DEFAULT_MAX_TTL_NS = 3600 * NS_PER_S
"""The longest a signed command or limit update may live (``expires_at - issued_at``)
when the trust file's ``[max_ttl_s]`` names no other."""
TTL_ACTIONS = frozenset({a.value for a in Action} | {LIMIT_UPDATE_ACTION})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Role(StrEnum):
    """What kind of signer a key is."""

    RISK_ENGINE = "risk-engine"
    LIMIT_ADMIN = "limit-admin"
    OPERATOR = "operator"
    EXECUTOR = "executor"
    """A trading-system executor: it signs execution acknowledgements, never commands."""


ROLE_PAYLOADS: dict[Role, frozenset[str]] = {
    Role.RISK_ENGINE: frozenset({PAYLOAD_COMMAND, PAYLOAD_AUDIT_CHECKPOINT}),
    Role.LIMIT_ADMIN: frozenset({PAYLOAD_LIMIT_UPDATE}),
    Role.OPERATOR: frozenset({PAYLOAD_COMMAND}),
    Role.EXECUTOR: frozenset({PAYLOAD_ACK}),
}
"""Which payload types each role may sign."""

PEOPLE = frozenset({Role.OPERATOR, Role.LIMIT_ADMIN})
"""The roles whose keys are people's: only they count toward the two-person rule and the
approvals counted on an operator's command (a guard replica or an executor is a
machine, however many of them sign)."""


def _match_any(_label: str) -> bool:
    return True


def _match_none(_label: str) -> bool:
    return False


@functools.lru_cache(maxsize=1024)
def scope_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """A cached predicate: does a label match any of ``patterns`` (``fnmatchcase`` rules)?
    One compiled regex per distinct tuple.

    >>> m = scope_matcher(("venue:*", "counterparty:okx"))
    >>> m("venue:binance"), m("counterparty:okx"), m("counterparty:deribit")
    (True, True, False)
    """
    if "*" in patterns:
        return _match_any
    if not patterns:
        return _match_none
    rx = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda label: rx.match(label) is not None


@dataclass(frozen=True)
class TrustedKey:
    """One key's entry in the trust file."""

    name: str
    key: VerifyKey
    role: Role
    actions: frozenset[str]
    scopes: tuple[str, ...]
    not_before: int | None = None
    not_after: int | None = None
    revoked: bool = False

    @property
    def key_id(self) -> str:
        return self.key.key_id

    def may_act(self, action: str) -> bool:
        return "*" in self.actions or action in self.actions

    def may_scope(self, label: str) -> bool:
        return scope_matcher(self.scopes)(label)


@dataclass(frozen=True)
class TwoPersonRule:
    """Actions that need two distinct people: on every scope matching ``scopes``, and on
    every scope wider than one venue or counterparty. A limit raise past ``limit_cap``
    (``concentration_cap`` for a concentration limit, a share) needs two people too: the
    limits judge it, against the limit in force (``Approved``), as only they know it."""

    actions: frozenset[str] = frozenset()
    scopes: tuple[str, ...] = ("*",)
    limit_cap: float | None = None
    concentration_cap: float | None = None

    def applies_to_command(self, action: str, scope: Scope) -> bool:
        return action in self.actions and (
            scope_is_wide(scope) or scope_matcher(self.scopes)(scope.label()))

    def applies_to_limit(self, label: str) -> bool:
        """Whether every limit update on ``label`` (``firm:*``, ``counterparty:<cp>``)
        needs two people: ``limit_update`` is among ``actions`` and the label is the
        firm's or matches ``scopes``. A raise past a cap is the limits' to judge.

        >>> rule = TwoPersonRule(actions=frozenset({"limit_update"}), scopes=("counterparty:okx",))
        >>> [rule.applies_to_limit(x) for x in ("counterparty:okx", "counterparty:bit", "firm:*")]
        [True, False, True]
        >>> TwoPersonRule(limit_cap=1.0).applies_to_limit("firm:*")
        False
        """
        return LIMIT_UPDATE_ACTION in self.actions and (
            label == "firm:*" or scope_matcher(self.scopes)(label))


@dataclass(frozen=True)
class TrustDoc:
    """A parsed trust file."""

    keys: tuple[TrustedKey, ...]
    two_person: TwoPersonRule = field(default_factory=TwoPersonRule)
    serial: int = 0
    max_ttl_ns: Mapping[str, int] = field(default_factory=dict)
    default_max_ttl_ns: int = DEFAULT_MAX_TTL_NS
    replicas: tuple[str, ...] | None = None
    """The issuer names of the guard replicas (``replicas``); None: not declared."""

    def replica_issuers(self) -> frozenset[str]:
        """Who may issue a copy of a guard's decision: the replicas the file names, or
        (none named) every key of role ``risk-engine``."""
        if self.replicas is not None:
            return frozenset(self.replicas)
        return frozenset(k.name for k in self.keys if k.role is Role.RISK_ENGINE)

    def max_ttl_for(self, action: str) -> int:
        """The longest lifetime (ns) a signed ``action`` (or ``limit_update``) may have."""
        return self.max_ttl_ns.get(action, self.default_max_ttl_ns)


@dataclass(frozen=True)
class RootSet:
    """The pinned root keys and how many of them must sign the trust file."""

    keys: tuple[VerifyKey, ...]
    threshold: int = 1

    def __post_init__(self) -> None:
        distinct = len({k.raw for k in self.keys})
        if not 1 <= self.threshold <= distinct:
            raise ConfigError(
                "roots.threshold", f"an integer between 1 and {distinct} (the root count)",
                self.threshold,
            )

    @classmethod
    def load(cls, path: str | Path) -> RootSet:
        """Read ``roots.toml``: ``threshold = k`` and ``[[roots]] public_key = "hex"``."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            msg = f"roots file {str(p)!r} cannot be read: {err}"
            raise TrustError(msg) from None
        try:
            doc = msgspec.convert(data, RootsFile)
        except msgspec.ValidationError as err:
            bad = config_error(err, data, RootsFile)
            raise ConfigError(f"{p}:{bad.path}", bad.expected, bad.found) from None
        keys = [VerifyKey.from_hex(r.public_key, path=f"{p}:roots[{i}].public_key")
                for i, r in enumerate(doc.roots)]
        return cls(keys=tuple(keys), threshold=doc.threshold)


class RootEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    public_key: str  # 64 hex digits


class RootsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``roots.toml`` as written: the pinned root keys and how many must sign."""

    roots: Annotated[tuple[RootEntry, ...], msgspec.Meta(min_length=1)]
    threshold: Annotated[int, msgspec.Meta(ge=1)] = 1


@dataclass(frozen=True)
class VerifiedMessage:
    """What :meth:`TrustStore.verify` returns once every check passed."""

    payload_type: str
    message: MitigationCommand | LimitUpdate | ExecutionAck
    issuer: str
    signers: tuple[str, ...]
    payload: bytes
    approvers: tuple[str, ...] = ()
    """The distinct people (names of operator and limit-admin keys) among the authorized
    signers."""


_sig_list = msgspec.json.Decoder(list[Signature])
_sig_enc = msgspec.json.Encoder()
_cmd_decoder = msgspec.json.Decoder(MitigationCommand)
_limit_decoder = msgspec.json.Decoder(LimitUpdate)
_ack_decoder = msgspec.json.Decoder(ExecutionAck)
_payload_encoder = msgspec.json.Encoder()


ActionName = Annotated[str, msgspec.Meta(min_length=1)]
"""An action name: a :class:`~riskguard.schemas.Action`, ``limit_update`` or ``*``."""
Seconds = Annotated[float, msgspec.Meta(gt=0, le=366 * 86_400)]


KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=64,
                                      pattern=r"^[A-Za-z0-9_./@+-]+$(?!\n)")]
"""A key's name: an issuer :data:`~riskguard.schemas.types.Name` without ``:``, which
joins a signer and its message id in every replay window
(:func:`~riskguard.operators.core.dedup.signer_id`)."""


class KeyEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One ``[[keys]]`` table of the trust file, as written."""

    name: KeyName  # the issuer this key speaks for
    public_key: str  # 64 hex digits
    role: Role
    key_id: str | None = None  # if given, must be the one derived from public_key
    actions: tuple[ActionName, ...] = ()
    scopes: tuple[str, ...] = ()
    not_before: Annotated[datetime, msgspec.Meta(tz=True)] | int | None = None
    not_after: Annotated[datetime, msgspec.Meta(tz=True)] | int | None = None
    revoked: bool = False
    comment: str = ""


class TwoPersonEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[two_person]`` table of the trust file."""

    actions: tuple[ActionName, ...] = ()
    scopes: tuple[str, ...] = ("*",)
    limit_cap: Annotated[float, msgspec.Meta(ge=0)] | None = None
    concentration_cap: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


class TrustFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The trust file as written: decoded in one pass, its values checked as declared."""

    version: Literal[1] = 1
    serial: Annotated[int, msgspec.Meta(ge=0)] = 0
    keys: tuple[KeyEntry, ...] = ()
    two_person: TwoPersonEntry = TwoPersonEntry()
    max_ttl_s: dict[str, Seconds] = {}  # action (or "default") -> longest lifetime
    # the guard replicas whose copies of one decision are one (default: every risk-engine)
    replicas: tuple[Annotated[str, msgspec.Meta(min_length=1)], ...] | None = None


def _ns(value: datetime | int | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000


def _known_actions(names: Iterable[str], where: str, extra: frozenset[str] = frozenset()
                   ) -> None:
    for name in names:
        if name not in TTL_ACTIONS and name not in extra:
            raise ConfigError(where, "action names" + did_you_mean(name, TTL_ACTIONS), name)


_SCOPE_KINDS = tuple(k.value for k in ScopeKind)


def _known_scopes(patterns: Iterable[str], where: str) -> None:
    """Each pattern is ``*`` or ``kind:value`` (globs allowed), its kind one that exists: a
    misspelt kind would match nothing, and a two-person rule on it would never apply."""
    for pattern in patterns:
        if pattern == "*":
            continue
        kind, colon, value = pattern.partition(":")
        if not colon or not value:
            raise ConfigError(where, "scope patterns: * or kind:value (venue:*, "
                              "counterparty:okx)", pattern)
        if not any(c in kind for c in "*?[") and kind not in _SCOPE_KINDS:
            raise ConfigError(where, "a scope kind of " + ", ".join(_SCOPE_KINDS)
                              + did_you_mean(kind, _SCOPE_KINDS), pattern)


def parse_trust(text: str, *, source: str = "trust") -> TrustDoc:
    """Parse trust-file TOML (already signature-checked) into a :class:`TrustDoc`."""
    try:
        text.encode()
        data = tomllib.loads(text)
    except UnicodeEncodeError as err:  # lone surrogates: no file decodes to them
        msg = f"{source}: not UTF-8 text: {err.reason} at character {err.start}"
        raise TrustError(msg) from None
    except tomllib.TOMLDecodeError as err:
        msg = f"{source}: not valid TOML: {err}"
        raise TrustError(msg) from None
    try:
        doc = msgspec.convert(data, TrustFile)
    except msgspec.ValidationError as err:
        bad = config_error(err, data, TrustFile)
        raise ConfigError(f"{source}:{bad.path}", bad.expected, bad.found) from None
    keys: list[TrustedKey] = []
    seen: set[bytes] = set()
    for i, k in enumerate(doc.keys):
        where = f"{source}:keys[{i}]"
        vk = VerifyKey.from_hex(k.public_key, path=f"{where}.public_key")
        if k.key_id is not None and k.key_id != vk.key_id:
            raise ConfigError(f"{where}.key_id", f"{vk.key_id} (derived from public_key)",
                              k.key_id)
        if vk.raw in seen:
            raise ConfigError(f"{where}.public_key", "each key listed once", vk.key_id)
        seen.add(vk.raw)
        nb, na = _ns(k.not_before), _ns(k.not_after)
        if nb is not None and na is not None and na <= nb:
            raise ConfigError(f"{where}.not_after", "later than not_before", k.not_after)
        _known_actions(k.actions, f"{where}.actions", frozenset({"*"}))
        _known_scopes(k.scopes, f"{where}.scopes")
        keys.append(TrustedKey(name=k.name, key=vk, role=k.role, actions=frozenset(k.actions),
                               scopes=k.scopes, not_before=nb, not_after=na,
                               revoked=k.revoked))
    tp = doc.two_person
    _known_actions(tp.actions, f"{source}:two_person.actions")
    _known_scopes(tp.scopes, f"{source}:two_person.scopes")
    for name in doc.max_ttl_s:
        if name not in TTL_ACTIONS and name != "default":
            raise ConfigError(f"{source}:max_ttl_s.{name}", "an action or default"
                              + did_you_mean(name, [*TTL_ACTIONS, "default"]), name)
    ttls = {name: int(s * NS_PER_S) for name, s in doc.max_ttl_s.items()}
    default_ttl = ttls.pop("default", DEFAULT_MAX_TTL_NS)
    return TrustDoc(keys=tuple(keys), two_person=TwoPersonRule(
        actions=frozenset(tp.actions), scopes=tp.scopes, limit_cap=tp.limit_cap,
        concentration_cap=tp.concentration_cap),
        serial=doc.serial, max_ttl_ns=ttls, default_max_ttl_ns=default_ttl,
        replicas=_replicas(doc.replicas, keys, f"{source}:replicas"))


def _replicas(names: tuple[str, ...] | None, keys: Sequence[TrustedKey], where: str
              ) -> tuple[str, ...] | None:
    """``replicas``: names of ``[[keys]]`` of role ``risk-engine``, each once."""
    if names is None:
        return None
    engines = sorted({k.name for k in keys if k.role is Role.RISK_ENGINE})
    for name in names:
        if name not in engines:
            raise ConfigError(where, "names of [[keys]] of role risk-engine (" +
                              (", ".join(engines) or "none listed") + ")"
                              + did_you_mean(name, engines), name)
    if len(set(names)) != len(names):
        raise ConfigError(where, "each replica named once", list(names))
    return names


def _decode_payload(payload_type: str, payload: bytes
                    ) -> MitigationCommand | LimitUpdate | ExecutionAck:
    """The signed payload as its message; anything a parser raises is a refusal. No key
    may repeat (every parser must read the bytes as msgspec did); only bytes that are
    not msgspec's own encoding of the message are scanned for one."""
    msg: MitigationCommand | LimitUpdate | ExecutionAck
    try:
        if payload_type == PAYLOAD_COMMAND:
            msg = _cmd_decoder.decode(payload)
        elif payload_type == PAYLOAD_LIMIT_UPDATE:
            msg = _limit_decoder.decode(payload)
        elif payload_type == PAYLOAD_ACK:
            msg = _ack_decoder.decode(payload)
        else:
            raise rejection(Reason.WRONG_PAYLOAD_TYPE,
                   f"{payload_type!r} is not a command, limit update or ack")
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise rejection(Reason.MALFORMED_PAYLOAD, str(err)[:200]) from None
    except VerificationError:
        raise
    except Exception as err:  # anything a parser raises is a refusal
        raise rejection(Reason.MALFORMED_PAYLOAD,
                        f"{type(err).__name__}: {str(err)[:160]}") from None
    if _payload_encoder.encode(msg) != payload:
        problem = duplicate_key_problem(payload)
        if problem is not None:
            raise rejection(Reason.MALFORMED_PAYLOAD, problem)
    return msg


def sig_path(trust_path: str | Path) -> Path:
    """The sidecar holding the root signatures of a trust file."""
    p = Path(trust_path)
    return p.with_name(p.name + ".sig")


def sign_trust_file(trust_path: str | Path, signer: Signer) -> Path:
    """Add ``signer``'s root signature over the trust file's exact bytes to the sidecar
    (k-of-n: each root holder signs in turn; the same key's earlier one is replaced)."""
    data = Path(trust_path).read_bytes()
    sp = sig_path(trust_path)
    sigs: list[Signature] = []
    if sp.exists():
        try:
            sigs = _sig_list.decode(sp.read_bytes())
        except msgspec.DecodeError as err:
            msg = f"{sp}: not a JSON list of signatures: {err}"
            raise TrustError(msg) from None
    sigs = [s for s in sigs if s.key_id != signer.key_id]
    sigs.append(signer.sign(PAYLOAD_TRUST, data))
    write_atomic(sp, _sig_enc.encode(sigs))  # a cut-short write keeps the old signatures
    return sp


def check_root_threshold(data: bytes, sigs: Sequence[Signature], roots: RootSet,
                         *, source: str = "trust") -> set[str]:
    """Return the key ids of roots that signed ``data``; raise ``TrustError`` below threshold."""
    good: set[str] = set()
    msg = pae(PAYLOAD_TRUST, data)
    for s in sigs:
        for root in roots.keys:
            if root.key_id in good:
                continue
            try:
                root.verify_raw(msg, s.sig)
            except VerificationError:
                continue
            good.add(root.key_id)
            break
    if len(good) < roots.threshold:
        text = (
            f"{source}: needs signatures from {roots.threshold} distinct root key(s); "
            f"got {len(good)} valid of {len(sigs)}"
        )
        raise TrustError(text)
    return good


def _verifies(share: list[tuple[VerifyKey, bytes, Signature]]) -> list[bool]:
    return [key.verifies(msg, s.sig) for key, msg, s in share]


class TrustStore:
    """The verified trust file, and the verifier for signed envelopes: :meth:`load`
    checks root signatures; tests may build one from a :class:`TrustDoc`."""

    def __init__(self, doc: TrustDoc) -> None:
        self.doc = doc
        self._by_id: dict[str, TrustedKey] = {k.key_id: k for k in doc.keys}
        self._ahead: dict[tuple[str, bytes, bytes], bool] = {}

    @property
    def serial(self) -> int:
        return self.doc.serial

    @classmethod
    def load(cls, trust_path: str | Path, roots: RootSet) -> TrustStore:
        """Load a trust file after checking its root signatures (``TrustError`` if short)."""
        p = Path(trust_path)
        try:
            data = p.read_bytes()
        except OSError as err:
            msg = f"trust file {str(p)!r} cannot be read: {err.strerror}"
            raise TrustError(msg) from None
        sp = sig_path(p)
        try:
            sigs = _sig_list.decode(sp.read_bytes())
        except OSError:
            msg = f"trust file {str(p)!r} is unsigned: no {sp.name}"
            raise TrustError(msg) from None
        except msgspec.DecodeError as err:
            msg = f"{sp}: not a JSON list of signatures: {err}"
            raise TrustError(msg) from None
        return cls.from_signed_bytes(data, sigs, roots, source=str(p))

    @classmethod
    def from_signed_bytes(cls, data: bytes, sigs: Sequence[Signature], roots: RootSet,
                          *, source: str = "trust") -> TrustStore:
        """Check the root threshold over ``data``, then parse it."""
        check_root_threshold(data, sigs, roots, source=source)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            msg = f"{source}: not UTF-8"
            raise TrustError(msg) from None
        return cls(parse_trust(text, source=source))

    def key(self, key_id: str) -> TrustedKey | None:
        """The trust entry for ``key_id``, if listed."""
        return self._by_id.get(key_id)

    def keys(self) -> Iterable[TrustedKey]:
        return self.doc.keys

    def name_of(self, key_id: str) -> str | None:
        """The name the trust file gives ``key_id`` (the issuer it speaks for), if listed."""
        k = self._by_id.get(key_id)
        return None if k is None else k.name

    def identify(self, payload_type: str, payload: bytes, sig: Signature) -> TrustedKey:
        """The trusted key the signature's hint names, if it made ``sig``; raises
        ``unknown_key`` or ``bad_signature``. Only the named key is tried, so a forgery
        costs one Ed25519 check however many keys the file lists."""
        hinted = self._by_id.get(sig.key_id)
        if hinted is None:
            raise rejection(Reason.UNKNOWN_KEY, f"key {sig.key_id!r} is not in the trust file")
        msg = pae_prefix(payload_type) + payload
        checked = self._ahead.pop((sig.key_id, sig.sig, msg), None)
        if checked is None:
            hinted.key.verify_raw(msg, sig.sig)
        elif not checked:
            raise rejection(Reason.BAD_SIGNATURE,
                            f"signature does not verify under key {sig.key_id}")
        return hinted

    def check_ahead(self, payload_type: str,
                    envelopes: Sequence[tuple[bytes, Sequence[Signature]]],
                    pool: Executor, threads: int) -> None:
        """Check the first signature of many ``(payload, signatures)`` at once, in
        ``threads`` shares on ``pool`` (Ed25519 releases the GIL); :meth:`identify` then
        takes each result once. Results not taken by the next call are dropped.
        """
        prefix = pae_prefix(payload_type)
        work: list[tuple[VerifyKey, bytes, Signature]] = []
        for payload, sigs in envelopes:
            if not 0 < len(sigs) <= MAX_SIGNATURES or any(
                    not isinstance(s.sig, bytes) or len(s.sig) != SIGNATURE_LEN for s in sigs):
                continue  # refused for its shape before any check
            k = self._by_id.get(sigs[0].key_id)
            if k is not None:
                work.append((k.key, prefix + payload, sigs[0]))
        self._ahead = {}
        if not work:
            return
        size = -(-len(work) // max(1, threads))
        shares = [work[i:i + size] for i in range(0, len(work), size)]
        for share, results in zip(shares, pool.map(_verifies, shares), strict=True):
            for (_, msg, s), ok in zip(share, results, strict=True):
                self._ahead[(s.key_id, s.sig, msg)] = ok

    def check_key_status(self, k: TrustedKey, now_ns: int) -> None:
        """Revoked, not yet valid or expired keys are rejected."""
        if k.revoked:
            raise rejection(Reason.REVOKED_KEY, f"key {k.key_id!r} ({k.name}) is revoked")
        if k.not_before is not None and now_ns < k.not_before:
            raise rejection(Reason.KEY_NOT_YET_VALID, f"key {k.key_id!r} valid from {k.not_before}")
        if k.not_after is not None and now_ns >= k.not_after:
            raise rejection(Reason.KEY_EXPIRED, f"key {k.key_id!r} expired at {k.not_after}")

    def signing_keys(self, payload_type: str, payload: bytes, sigs: Sequence[Signature],
                     now_ns: int) -> list[TrustedKey]:
        """Verify every signature over the exact bytes; return distinct trusted keys."""
        check_signature_shapes(sigs)
        if len(sigs) == 1:
            k = self.identify(payload_type, payload, sigs[0])
            self.check_key_status(k, now_ns)
            return [k]
        out: dict[str, TrustedKey] = {}
        for s in sigs:
            k = self.identify(payload_type, payload, s)
            self.check_key_status(k, now_ns)
            if k.key_id not in out:
                out[k.key_id] = k
        return list(out.values())

    def verify(
        self,
        envelope: Any,
        *,
        expected_payload_type: str,
        audience: Audience,
        now_ns: int,
        leeway_ns: int = DEFAULT_LEEWAY_NS,
    ) -> VerifiedMessage:
        """Check an envelope end to end; return the typed message or raise.

        Order: payload type, signatures over the exact bytes, key status, then (only now)
        parse the payload, then issuer binding, the command's scope and params, role,
        action, scope, two-person rule (distinct people, not keys), audience, freshness
        and lifetime. Replay protection needs durable state: the subscriber keeps it
        (:class:`~riskguard.connectors.subscriber_state.SubscriberState`).
        """
        if envelope.payload_type != expected_payload_type:
            raise rejection(Reason.WRONG_PAYLOAD_TYPE,
                   f"expected {expected_payload_type!r}; got {envelope.payload_type!r}")
        payload: bytes = envelope.payload
        signers = self.signing_keys(expected_payload_type, payload, envelope.signatures, now_ns)
        msg = _decode_payload(expected_payload_type, payload)
        try:
            return self._verify_message(msg, signers, expected_payload_type, payload,
                                        audience, now_ns, leeway_ns)
        except VerificationError as err:
            err.message = msg  # what it claims names the refusal
            raise

    def _verify_message(self, msg: MitigationCommand | LimitUpdate | ExecutionAck,
                        signers: list[TrustedKey], expected_payload_type: str, payload: bytes,
                        audience: Audience, now_ns: int, leeway_ns: int) -> VerifiedMessage:
        """The checks of a decoded message, from its issuer binding on."""
        if not any(k.name == msg.issuer for k in signers):
            raise rejection(Reason.ISSUER_MISMATCH,
                   f"issuer {msg.issuer!r} is not bound to any signing key "
                   f"({', '.join(k.name for k in signers)})")
        action, scope_label, two = self._subject(msg)
        labels = (scope_label, *(param_scopes(action, msg.params)
                                 if isinstance(msg, MitigationCommand) else ()))
        authorized = self._authorized(signers, expected_payload_type, action, labels)
        approvers = tuple(dict.fromkeys(k.name for k in authorized if k.role in PEOPLE))
        if two and len(approvers) < 2:
            raise rejection(Reason.TWO_PERSON_REQUIRED,
                   f"{action} on {scope_label} needs two distinct people; got "
                   f"{len(authorized)} authorized key(s), of {len(approvers)} "
                   f"({', '.join(approvers) or 'none'}) people")
        if msg.audience != audience:
            raise rejection(Reason.WRONG_AUDIENCE,
                   f"expected env={audience.env!r} topic={audience.topic!r}; got "
                   f"env={msg.audience.env!r} topic={msg.audience.topic!r}")
        check_freshness(msg.issued_at, msg.expires_at, now_ns, leeway_ns)
        max_ttl = (self.doc.default_max_ttl_ns if isinstance(msg, ExecutionAck)
                   else self.doc.max_ttl_for(action))
        if msg.expires_at - msg.issued_at > max_ttl:
            raise rejection(Reason.TTL_TOO_LONG,
                   f"{action} lives {(msg.expires_at - msg.issued_at) / NS_PER_S:.0f} s; "
                   f"the trust file allows at most {max_ttl / NS_PER_S:.0f} s")
        return VerifiedMessage(
            payload_type=expected_payload_type, message=msg, issuer=msg.issuer,
            signers=tuple([k.key.key_id for k in authorized]), payload=payload,
            approvers=approvers,
        )

    def _subject(self, msg: MitigationCommand | LimitUpdate | ExecutionAck
                 ) -> tuple[str, str, bool]:
        """What ``msg`` asks: its action, the label of its scope, and whether it needs two
        people. A command's scope and params are checked here."""
        if isinstance(msg, MitigationCommand):
            action = msg.action.value
            bad_scope = command_scope_problem(msg.scope)
            if bad_scope is not None:
                raise rejection(Reason.BAD_SCOPE, bad_scope)
            bad_params = check_params(action, msg.params)
            if bad_params is not None:
                raise rejection(Reason.BAD_PARAMS, bad_params)
            return action, msg.scope.label(), \
                self.doc.two_person.applies_to_command(action, msg.scope)
        if isinstance(msg, ExecutionAck):
            # an ack asks nothing of anyone: one signer, checked against its actions/scopes
            return msg.action.value, msg.scope.label(), False
        try:
            label = limit_scope_label(msg.limit_path)
        except ValueError as err:
            raise rejection(Reason.BAD_SCOPE, str(err)[:300]) from None
        return LIMIT_UPDATE_ACTION, label, self.doc.two_person.applies_to_limit(label)

    def _authorized(self, signers: list[TrustedKey], payload_type: str, action: str,
                    scope_labels: tuple[str, ...]) -> list[TrustedKey]:
        """The signers whose role, actions and scopes (every one of ``scope_labels``: the
        command's and those its params name) allow this; none: the first signer's
        refusal."""
        authorized: list[TrustedKey] = []
        first_refusal: tuple[Reason, str] | None = None
        for k in signers:
            refusal = self._refusal(k, payload_type, action, scope_labels)
            if refusal is None:
                authorized.append(k)
            elif first_refusal is None:
                first_refusal = refusal
        if not authorized and first_refusal is not None:
            raise rejection(*first_refusal)
        return authorized

    @staticmethod
    def _refusal(k: TrustedKey, payload_type: str, action: str,
                 scope_labels: tuple[str, ...]) -> tuple[Reason, str] | None:
        """Why ``k`` may not sign this, or None if it may."""
        if payload_type not in ROLE_PAYLOADS[k.role]:
            return (Reason.ROLE_NOT_PERMITTED,
                    f"role {k.role.value!r} of key {k.key_id!r} may not sign {payload_type}")
        if not k.may_act(action):
            return (Reason.ACTION_NOT_AUTHORIZED,
                    f"key {k.key_id!r} ({k.role.value}) may not sign action {action!r}")
        for i, label in enumerate(scope_labels):
            if not k.may_scope(label):
                named = " (named in its params)" if i else ""
                return (Reason.SCOPE_NOT_AUTHORIZED,
                        f"key {k.key_id!r} may not sign for scope {label!r}{named}")
        return None

    def checkpoint_key(self, key_id: str, now_ns: int | None = None) -> VerifyKey:
        """The public key allowed to sign audit checkpoints under ``key_id``: at
        ``now_ns`` (a checkpoint's ``ts``), a key inside its validity window and not
        revoked; without it, a key not revoked."""
        k = self._by_id.get(key_id)
        if k is None:
            raise rejection(Reason.UNKNOWN_KEY, f"key {key_id!r} is not in the trust file")
        if PAYLOAD_AUDIT_CHECKPOINT not in ROLE_PAYLOADS[k.role]:
            raise rejection(Reason.ROLE_NOT_PERMITTED,
                            f"role {k.role.value!r} may not sign checkpoints")
        if now_ns is not None:
            self.check_key_status(k, now_ns)
        elif k.revoked:
            raise rejection(Reason.REVOKED_KEY, f"key {k.key_id!r} ({k.name}) is revoked")
        return k.key


def check_freshness(issued_at: int, expires_at: int, now_ns: int, leeway_ns: int) -> None:
    """Reject messages past their expiry or issued beyond the clock-skew leeway."""
    if expires_at <= issued_at:
        raise rejection(Reason.BAD_VALIDITY,
                        f"expires_at {expires_at} is not after issued_at {issued_at}")
    if issued_at > now_ns + leeway_ns:
        raise rejection(Reason.FROM_FUTURE,
               f"issued_at is {(issued_at - now_ns) / NS_PER_S:.3f} s ahead; leeway "
               f"{leeway_ns / NS_PER_S:.3f} s")
    if now_ns > expires_at + leeway_ns:
        raise rejection(Reason.EXPIRED, f"expired {(now_ns - expires_at) / NS_PER_S:.3f} s ago")


def limit_scope_label(limit_path: str) -> str:
    """The scope label a limit path falls under, for authorization: read by
    :func:`~riskguard.schemas.signals.parse_limit_path`, as the limits read it; raises
    ``ValueError`` for a path that is malformed or could be read more than one way.

    >>> limit_scope_label("counterparty.okx.asset.BTC"), limit_scope_label("firm")
    ('counterparty:okx', 'firm:*')
    >>> limit_scope_label("counterparty.okx.eu")
    'counterparty:okx.eu'
    """
    key, _level, _name = parse_limit_path(limit_path)
    return "firm:*" if key == "*" else f"counterparty:{key}"


def check_trust_serial(serial: int, newest: int, where: str) -> None:
    """Refuse a trust file of ``serial`` where a newer one (``newest``) was run on before.

    >>> check_trust_serial(4, 4, "the recovery directory")
    >>> try:
    ...     check_trust_serial(3, 4, "the recovery directory")
    ... except ConfigError as err:
    ...     print(str(err)[:44], "...", str(err)[-14:])
    keys.trust_file: a trust file of serial 4 or ... got 'serial 3'
    """
    if serial < newest:
        raise ConfigError("keys.trust_file", f"a trust file of serial {newest} or later "
                          f"({where} ran on it; an older one may trust keys since revoked)",
                          f"serial {serial}")
