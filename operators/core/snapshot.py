"""Snapshots as versioned data: what a logic's state becomes in a recovery store.

A state class is persisted under a stable name and the version in its ``version``
field (:func:`persisted`). Its snapshot is a :class:`Snapshot` (that name, that version
and the state's fields, msgpack-encoded by their declared types): no class or module
path is stored, so a moved or renamed class still restores; a snapshot of another
version is refused, never patched (:class:`~riskguard.errors.SnapshotError`).
:func:`~riskguard.operators.core.base.stateful_logic` encodes and decodes them; a state
class not declared persisted is handed over as it is.

>>> from dataclasses import dataclass, field
>>> @persisted("doc.counter")
... @dataclass
... class CounterState:
...     counts: dict[str, int] = field(default_factory=dict)
...     version: int = 2
>>> data = encode_snapshot(CounterState({"okx": 3}))
>>> type(data).__name__, decode_snapshot(data)
('bytes', CounterState(counts={'okx': 3}, version=2))
>>> try:
...     decode_snapshot(encode_snapshot(CounterState({"okx": 3}, version=1)))
... except SnapshotError as err:
...     print(err)
snapshot 'doc.counter': this riskguard restores version 2 only; got version 1
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, get_args, get_origin

import msgspec
import numpy as np

from riskguard.errors import SnapshotError

T = TypeVar("T")


class Snapshot(msgspec.Struct, frozen=True, array_like=True):
    """The persisted form of one logic's state: its stable ``name``, the ``version`` of
    its fields, and the fields themselves (msgpack)."""

    name: str
    version: int
    state: msgspec.Raw


def _enc_hook(obj: Any) -> Any:
    """numpy arrays (the exposure shards' columns) as ``(dtype, shape, data)``, an array
    of Python objects (instrument ids) as its list; a deque (features' histories) as a
    list."""
    if isinstance(obj, deque):
        return list(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return ("O", list(obj.shape), obj.tolist())
        return (obj.dtype.str, list(obj.shape), obj.tobytes())
    msg = f"a snapshot field of type {type(obj).__name__} has no persisted form"
    raise NotImplementedError(msg)


def _dec_hook(kind: type, obj: Any) -> Any:
    if get_origin(kind) is deque:
        return deque(msgspec.convert(obj, list[get_args(kind)[0]]))  # type: ignore[misc]
    if kind is np.ndarray:
        dtype, shape, data = obj
        if dtype == "O":
            return np.array(data, dtype=object).reshape(shape)
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()
    msg = f"a snapshot field of type {kind.__name__} has no persisted form"
    raise NotImplementedError(msg)


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_ENVELOPE = msgspec.msgpack.Decoder(Snapshot)


class _Codec:
    """How one state class is persisted: its name, its current version, its decoder."""

    def __init__(self, name: str, cls: type, version: int) -> None:
        self.name = name
        self.cls = cls
        self.version = version
        self.decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
            cls, dec_hook=_dec_hook)


_BY_NAME: dict[str, _Codec] = {}
_BY_CLASS: dict[type, _Codec] = {}


def persisted(name: str) -> Callable[[type[T]], type[T]]:
    """Declare a state class (a dataclass or a msgspec Struct with a ``version`` field
    whose default is its current version) persisted under ``name``.

    ``name`` stays the same when the class moves or is renamed: it is what a snapshot
    is restored by. Change the version when the fields change in a way an older
    snapshot cannot be read as: snapshots of another version are then refused."""

    def register(cls: type[T]) -> type[T]:
        version = _default_version(cls)
        codec = _Codec(name, cls, version)
        old = _BY_NAME.get(name)
        if old is not None:  # the same state defined again (a module moved or reloaded)
            _BY_CLASS.pop(old.cls, None)
        _BY_NAME[name] = codec
        _BY_CLASS[cls] = codec
        return cls

    return register


def forget_persisted(name: str) -> None:
    """Forget the state declared under ``name``: its snapshots no longer restore (a
    plugin unloaded, or a test's module removed)."""
    codec = _BY_NAME.pop(name, None)
    if codec is not None:
        _BY_CLASS.pop(codec.cls, None)


def _default_version(cls: type) -> int:
    if dataclasses.is_dataclass(cls):
        found = {f.name: f.default for f in dataclasses.fields(cls)}
    else:
        found = {f.name: f.default for f in msgspec.structs.fields(cls)}
    version = found.get("version")
    if not isinstance(version, int):
        msg = f"{cls.__name__} has no version field with an int default"
        raise TypeError(msg)
    return version


def is_persisted(state: Any) -> bool:
    """Is ``state`` of a class :func:`persisted` declared?"""
    return type(state) in _BY_CLASS


def encode_snapshot(state: Any) -> Any:
    """``state`` as the bytes of its :class:`Snapshot`; a state of a class not declared
    :func:`persisted` (and ``None``) as it is."""
    codec = _BY_CLASS.get(type(state))
    if codec is None:
        return state
    return _ENCODER.encode(Snapshot(codec.name, getattr(state, "version", codec.version),
                                    msgspec.Raw(_ENCODER.encode(state))))


def decode_snapshot(data: Any) -> Any:
    """The state a snapshot's bytes hold, as its persisted class today; anything other
    than bytes as it is, unless it is a persisted class's instance that was stored as an
    object (pickled by riskguard 0.1), which is refused."""
    if not isinstance(data, bytes):
        codec = _BY_CLASS.get(type(data))
        if codec is not None:
            raise SnapshotError(codec.name, "a snapshot stored as versioned data "
                                "(riskguard 0.1 snapshots do not carry over)",
                                f"a pickled {type(data).__name__}")
        return data
    try:
        snap = _ENVELOPE.decode(data)
    except msgspec.DecodeError as err:
        raise SnapshotError("?", "a riskguard snapshot", f"undecodable bytes ({err})") from err
    codec = _BY_NAME.get(snap.name)
    if codec is None:
        raise SnapshotError(snap.name, "the name of a state this riskguard restores",
                            "no such state")
    if snap.version != codec.version:
        raise SnapshotError(snap.name, f"version {codec.version} only", f"version {snap.version}")
    try:
        return codec.decoder.decode(snap.state)
    except msgspec.DecodeError as err:
        raise SnapshotError(snap.name, f"a state of version {codec.version}",
                            f"fields that do not decode ({err})") from err
