"""The command subscriber's durable state, and the high-water mark kept apart from it.

:class:`SubscriberState` is SQLite; writes go into one open transaction that
:meth:`SubscriberState.flush` commits, so a flood of rejections costs one synced commit
per batch. :class:`HighWaterMark` is a small JSON file kept apart from it, rewritten
atomically after each flush that raised a ``seq``: a state behind it (deleted, or
restored from an older copy) would execute again what it executed, so the subscriber
refuses to start on it (:func:`state_behind`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from riskguard.schemas.action_params import HELD_ACTIONS, resume_lifts
from riskguard.schemas.commands import MitigationCommand

from riskguard.atomic import write_atomic
from riskguard.errors import ConfigError, StateError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seq_hw (issuer TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS handled (issuer TEXT NOT NULL, command_id TEXT NOT NULL,
                                    seq INTEGER NOT NULL, expires_at INTEGER NOT NULL,
                                    PRIMARY KEY (issuer, command_id));
CREATE TABLE IF NOT EXISTS offsets (topic TEXT NOT NULL, part INTEGER NOT NULL,
                                    next_offset INTEGER NOT NULL, PRIMARY KEY (topic, part));
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS copies (decision_id TEXT NOT NULL, content BLOB NOT NULL,
                                   issuer TEXT NOT NULL, command_id TEXT NOT NULL,
                                   keep_until INTEGER NOT NULL,
                                   PRIMARY KEY (decision_id, content));
CREATE INDEX IF NOT EXISTS handled_by_expiry ON handled (expires_at);
CREATE INDEX IF NOT EXISTS copies_by_expiry ON copies (keep_until);
"""
_HOLDS = ("CREATE TABLE IF NOT EXISTS holds (action TEXT NOT NULL, scope TEXT NOT NULL, "
          "command_id TEXT NOT NULL, params BLOB NOT NULL, issuer TEXT NOT NULL, "
          "PRIMARY KEY (action, scope, issuer, command_id))",
          "CREATE INDEX IF NOT EXISTS holds_by_scope ON holds (scope)")
"""The holds in force: one row per signer's command (ids are each signer's own)."""


MAX_HOLDS = 64
"""Holds of one action on one scope kept side by side by one signer (the guard's replicas
count as one): the subscriber refuses that signer's command that would hold one more
(``too_many_holds``), as an executor's scope book does; none held is ever forgotten to
make room, and no signer's holds use up another's room."""


DECISIONS_KEPT = 65_536
"""Executed decisions remembered past their window: the newest this many stay, so a
guard restored from an old snapshot, re-deriving what it decided then, finds them
executed (a duplicate) however long ago that was. A decision never executed is never
among them: remembering more refuses no genuine one."""


def params_key(cmd: MitigationCommand) -> bytes:
    """Canonical bytes of a command's params (an update with new params is not a repeat)."""
    return msgspec.json.encode(cmd.params, order="sorted")


def content_key(cmd: MitigationCommand) -> bytes:
    """What a decision is: its action, exact scope and params, canonically encoded. Two
    copies of one decision agree on it; a copy that does not is another decision."""
    return msgspec.json.encode([cmd.action.value, cmd.scope.label(), cmd.params],
                               order="sorted")


@dataclass(frozen=True)
class Copy:
    """An executed copy of a decision."""

    content: bytes
    issuer: str
    command_id: str


_OLDER_TABLES = {
    "seen": "handled ids kept in one table across issuers",
    "in_force": "one hold per action and scope, not naming its issuer",
}


def _older_layout(db: sqlite3.Connection) -> str | None:
    """What makes the state file open on ``db`` one of an older layout (None: it is
    not): an older table, or holds that do not name their issuer (such a hold would
    answer a repeat whoever signed it)."""
    tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master "
                                            "WHERE type='table'")}
    for table, what in _OLDER_TABLES.items():
        if table in tables:
            return f"table {table!r} ({what})"
    if "holds" not in tables:
        return None
    columns = {str(r[1]) for r in db.execute("PRAGMA table_info(holds)")}
    if "issuer" not in columns:
        return "holds without their issuer (no issuer column)"
    keyed = {str(r[1]) for r in db.execute("PRAGMA table_info(holds)") if r[5]}
    if "issuer" not in keyed:
        return "holds keyed without their issuer (another signer's id would replace them)"
    unnamed = db.execute("SELECT count(*) FROM holds WHERE issuer=''").fetchone()[0]
    if unnamed:
        return f"{unnamed} hold(s) naming no issuer"
    return None


def _refuse_older_layout(db: sqlite3.Connection, path: str) -> None:
    """Stop on a state file of an older layout, before anything is written to it."""
    found = _older_layout(db)
    if found is not None:
        msg = (f"subscriber state {path} is of an older layout: {found}. State files "
               "of riskguard 0.1 do not carry over: move it aside and start on a new one "
               "(the high-water mark file keeps what was executed from running again: "
               "start with --accept-state-loss)")
        raise StateError(msg)


class SubscriberState:
    """Durable replay state in SQLite, written in batches (:meth:`flush` commits)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        try:
            _refuse_older_layout(self.db, self.path)
        except BaseException:
            self.db.close()
            raise
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        for sql in _HOLDS:
            self.db.execute(sql)
        self.raised_seq = False  # a seq high-water mark rose in the open transaction
        self.commits = 0  # synced commits so far (a flood of rejections costs few)
        # consumed offsets not yet written: (topic, partition) -> next offset
        self._offsets: dict[tuple[str, int], int] = {}

    # -- reads (they see the open transaction's writes) -------------------------

    def high_water(self, issuer: str) -> int | None:
        row = self.db.execute("SELECT seq FROM seq_hw WHERE issuer=?", (issuer,)).fetchone()
        return None if row is None else int(row[0])

    def high_waters(self) -> dict[str, int]:
        return {str(i): int(s) for i, s in self.db.execute("SELECT issuer, seq FROM seq_hw")}

    def seen(self, issuer: str, command_id: str) -> bool:
        """Whether ``issuer`` has had a command ``command_id`` handled: ids are each
        signer's own, so no key can use up another's."""
        q = "SELECT 1 FROM handled WHERE issuer=? AND command_id=?"
        return self.db.execute(q, (issuer, command_id)).fetchone() is not None

    def copies(self, decision_id: str) -> list[Copy]:
        """The executed copies of ``decision_id``, oldest first (one per content)."""
        rows = self.db.execute("SELECT content, issuer, command_id FROM copies WHERE "
                               "decision_id=? ORDER BY rowid", (decision_id,))
        return [Copy(bytes(c), str(i), str(k)) for c, i, k in rows]

    def in_force(self, action: str, scope: str, params: bytes,
                 issuers: Collection[str] | None = None) -> str | None:
        """The command_id holding ``action`` on ``scope`` with these exact params, if any;
        with ``issuers``, only a command one of them signed."""
        q = "SELECT command_id FROM holds WHERE action=? AND scope=? AND params=?"
        args: list[str | bytes] = [action, scope, params]
        if issuers is not None:
            names = sorted(issuers)
            q += f" AND issuer IN ({', '.join('?' * len(names))})"
            args += names
        row = self.db.execute(q + " ORDER BY rowid", args).fetchone()
        return None if row is None else str(row[0])

    def holds_beside(self, action: str, scope: str, command_id: str,
                     issuers: Collection[str] | None = None, *, issuer: str = "") -> int:
        """How many other commands hold ``action`` on ``scope`` than ``issuer``'s
        ``command_id``; with ``issuers``, only those one of them signed."""
        q = ("SELECT count(*) FROM holds WHERE action=? AND scope=? AND NOT "
             "(command_id=? AND issuer=?)")
        args: list[str] = [action, scope, command_id, issuer]
        if issuers is not None:
            names = sorted(issuers)
            q += f" AND issuer IN ({', '.join('?' * len(names))})"
            args += names
        return int(self.db.execute(q, args).fetchone()[0])

    def held(self) -> list[tuple[str, str, str]]:
        """Every mitigation held in force: (action, scope label, command id)."""
        rows = self.db.execute("SELECT action, scope, command_id FROM holds ORDER BY rowid")
        return [(str(a), str(sc), str(c)) for a, sc, c in rows]

    def next_offsets(self, topic: str) -> dict[int, int]:
        rows = self.db.execute("SELECT part, next_offset FROM offsets WHERE topic=?", (topic,))
        out = {int(p): int(o) for p, o in rows}
        for (t, p), o in self._offsets.items():
            if t == topic:
                out[p] = max(out.get(p, o), o)
        return out

    def trust_serial(self) -> int | None:
        row = self.db.execute("SELECT v FROM meta WHERE k='trust_serial'").fetchone()
        return None if row is None else int(row[0])

    # -- writes (into the open transaction) --------------------------------------

    def _begin(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")

    def set_trust_serial(self, serial: int) -> None:
        self._begin()
        self.db.execute("INSERT INTO meta VALUES ('trust_serial', ?) ON CONFLICT(k) "
                        "DO UPDATE SET v=max(v, excluded.v)", (serial,))

    def raise_seq(self, issuer: str, seq: int) -> None:
        """The seq high-water mark of ``issuer`` is at least ``seq``."""
        self._begin()
        self.db.execute("INSERT INTO seq_hw VALUES (?, ?) ON CONFLICT(issuer) DO UPDATE SET "
                        "seq=max(seq, excluded.seq)", (issuer, seq))
        self.raised_seq = True

    def record(self, *, topic: str, partition: int, offset: int,
               cmd: MitigationCommand | None, executed: bool = True, holds: bool = True,
               keep_decision_until: int = 0) -> None:
        """Record a handled message: the command (if any), what it leaves in force (unless
        ``holds`` is false: another command's hold answered it), its decision's copy, and
        the consumed offset. Committed by the next :meth:`flush`."""
        if offset >= 0:  # written at the flush: a flood of rejections writes no row each
            key = (topic, partition)
            if offset >= self._offsets.get(key, 0):
                self._offsets[key] = offset + 1
        if cmd is None:
            return
        self._begin()
        if executed:
            if cmd.decision_id:
                self.db.execute("INSERT OR IGNORE INTO copies VALUES (?, ?, ?, ?, ?)",
                                (cmd.decision_id, content_key(cmd), cmd.issuer,
                                 cmd.command_id, max(cmd.expires_at, keep_decision_until)))
            if holds or cmd.action.value == "resume":
                self._hold(cmd)
        self.raise_seq(cmd.issuer, cmd.seq)
        self.db.execute("INSERT OR IGNORE INTO handled VALUES (?, ?, ?, ?)",
                        (cmd.issuer, cmd.command_id, cmd.seq, cmd.expires_at))

    def _hold(self, cmd: MitigationCommand) -> None:
        """A held action stays in force on its scope, beside the holds of that action
        other commands keep there (the subscriber refuses one past ``MAX_HOLDS`` before
        it executes); a resume lifts what it names."""
        scope = cmd.scope.label()
        action = cmd.action.value
        if action == "resume":
            acts, ids = cmd.params.get("actions"), cmd.params.get("resumes")
            acts = [str(a) for a in acts] if isinstance(acts, list) else []
            ids = [str(i) for i in ids] if isinstance(ids, list) else []
            rows = self.db.execute("SELECT action, command_id FROM holds WHERE scope=?",
                                   (scope,)).fetchall()
            self.db.executemany(
                "DELETE FROM holds WHERE action=? AND scope=? AND command_id=?",
                [(a, scope, c) for a, c in rows if resume_lifts(acts, ids, a, c)])
        elif action in HELD_ACTIONS:
            self.db.execute("INSERT OR REPLACE INTO holds VALUES (?, ?, ?, ?, ?)",
                            (action, scope, cmd.command_id, params_key(cmd), cmd.issuer))

    def flush(self) -> bool:
        """Commit the open transaction (one synced write); whether a seq mark rose."""
        if self._offsets:
            self._begin()
            self.db.executemany(
                "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT(topic, part) DO UPDATE "
                "SET next_offset=max(next_offset, excluded.next_offset)",
                [(t, p, o) for (t, p), o in self._offsets.items()])
            self._offsets.clear()
        if self.db.in_transaction:
            self.db.execute("COMMIT")
            self.commits += 1
        raised, self.raised_seq = self.raised_seq, False
        return raised

    def prune(self, before_ns: int) -> int:
        """Forget executed ids that expired before ``before_ns`` (freshness rejects them),
        and the decisions kept until before it, but the newest :data:`DECISIONS_KEPT`."""
        self._begin()
        cur = self.db.execute("DELETE FROM handled WHERE expires_at < ?", (before_ns,))
        # rows are only ever deleted below the newest DECISIONS_KEPT, so those are the
        # rowids above max - DECISIONS_KEPT: found in the rowid order, not by a scan
        self.db.execute("DELETE FROM copies WHERE rowid <= (SELECT max(rowid) FROM copies)"
                        " - ? AND +keep_until < ?", (DECISIONS_KEPT, before_ns))
        return cur.rowcount

    def close(self) -> None:
        self.flush()
        self.db.close()


# -- the high-water mark ---------------------------------------------------------------


@dataclass
class Mark:
    """What the high-water mark file holds."""

    seq: dict[str, int] = field(default_factory=dict)
    trust_serial: int = 0


class HighWaterMark:
    """The highest seq executed per signer and the trust serial, in a file of its own.

    Keep it apart from the state (another volume, or at least another file): losing or
    rolling back the state must not lose the mark too. Written atomically (a temporary
    file, fsynced, renamed over it, the folder fsynced).
    """

    VERSION = 1

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> Mark | None:
        """The mark, or None if there is no file yet; ``ConfigError`` if unreadable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as err:
            raise ConfigError(str(self.path), "a readable high-water mark file",
                              err.strerror) from None
        try:
            data = json.loads(text)
            if data.get("version") != self.VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            seq = {str(k): int(v) for k, v in dict(data["seq"]).items()}
            return Mark(seq=seq, trust_serial=int(data["trust_serial"]))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(str(self.path), "a high-water mark written by riskguard "
                              f"(version {self.VERSION})", str(err)[:200]) from None

    def save(self, mark: Mark) -> None:
        body = json.dumps({"version": self.VERSION, "seq": dict(sorted(mark.seq.items())),
                           "trust_serial": mark.trust_serial}, indent=1).encode()
        write_atomic(self.path, body)


def state_behind(mark: Mark, seq: Mapping[str, int], trust_serial: int | None) -> str | None:
    """Why a state with these seq marks and trust serial is behind ``mark`` (None: it is
    not: it may be ahead, after a crash between the state's commit and the mark's write).

    >>> state_behind(Mark({"engine-1": 12}, 3), {"engine-1": 12}, 3) is None
    True
    >>> state_behind(Mark({"engine-1": 12}, 3), {"engine-1": 7}, 3)
    "issuer 'engine-1' executed up to seq 12, the state knows seq 7"
    >>> state_behind(Mark({"engine-1": 12}, 3), {}, None)
    "issuer 'engine-1' executed up to seq 12, the state knows none"
    """
    for issuer, hw in sorted(mark.seq.items()):
        have = seq.get(issuer)
        if have is None or have < hw:
            return (f"issuer {issuer!r} executed up to seq {hw}, the state knows "
                    f"{'none' if have is None else f'seq {have}'}")
    if mark.trust_serial > (trust_serial or 0):
        return (f"trust serial {mark.trust_serial} was accepted, the state knows "
                f"{trust_serial if trust_serial is not None else 'none'}")
    return None
