"""Read riskguard's Prometheus endpoints and summarize them (``riskguard status``).

:func:`summarize` folds the scrapes of one or more guard processes into a plain-dict
summary; :func:`render_text` prints it on one screen and :class:`StatusServer` serves it
as an HTML page polling ``/api/status``. Across processes, counters and episode gauges
are summed, utilizations and failover states take the maximum, and the checkpoint age
the minimum (only the process that owns an audit chain sees its checkpoints).

>>> text = '''# TYPE riskguard_events_in_total counter
... riskguard_events_in_total{stream="dev.riskguard.market.v1"} 100.0
... # TYPE riskguard_dead_letters_total counter
... riskguard_dead_letters_total{stream="dev.riskguard.market.v1",reason="bad_json"} 10.0
... # TYPE riskguard_limit_utilization gauge
... riskguard_limit_utilization{counterparty="okx",limit="counterparty.okx",kind="gross"} 0.5
... '''
>>> s = summarize([Scrape(url="u", samples=parse_metrics(text))])
>>> s["health"]["events_in"], s["health"]["dead_letter_ratio"], s["utilizations"][0]["limit"]
(100.0, 0.1, 'counterparty.okx')
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from riskguard.operators.core.http_limits import BoundedConnections, ConnectionDeadline
from riskguard.operators.signing.commands import decode_command
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, VerifyKey, decode_envelope
from riskguard.schemas import Action, MitigationCommand
from riskguard.schemas.action_params import HELD_ACTIONS, resume_lifts
from riskguard.schemas.json_limits import check_json_depth

from riskguard.errors import RiskguardError

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    """One parsed sample: metric sample name, sorted labels, value."""

    name: str
    labels: Labels
    value: float


@dataclass
class Scrape:
    """One endpoint's samples, or the error that stopped the scrape."""

    url: str
    samples: list[Sample] = field(default_factory=list)
    error: str = ""

    @property
    def up(self) -> bool:
        return not self.error


def parse_metrics(text: str) -> list[Sample]:
    """Parse Prometheus text exposition into samples."""
    return [Sample(s.name, tuple(sorted(s.labels.items())), float(s.value))
            for fam in text_string_to_metric_families(text) for s in fam.samples]


def scrape(url: str, timeout_s: float = 5.0) -> Scrape:
    """Fetch and parse one ``/metrics`` endpoint; a failure is recorded, not raised."""
    if not url.startswith(("http://", "https://")):
        msg = f"status: metrics URL must start with http:// or https://; got {url!r}"
        raise RiskguardError(msg)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # scheme checked above
            text = resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        return Scrape(url=url, error=f"{type(err).__name__}: {getattr(err, 'reason', err)}")
    except ValueError as err:  # a malformed URL (http://[::1, a bad port)
        return Scrape(url=url, error=f"bad URL: {err}")
    try:
        return Scrape(url=url, samples=parse_metrics(text))
    except ValueError as err:
        return Scrape(url=url, error=f"not Prometheus text: {err}")


def _fold(
    scrapes: Iterable[Scrape], name: str, keys: Sequence[str],
    combine: Callable[[float, float], float] = float.__add__,
) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for sc in scrapes:
        for s in sc.samples:
            if s.name != name or math.isnan(s.value):
                continue
            lab = dict(s.labels)
            k = tuple(lab.get(x, "") for x in keys)
            out[k] = combine(out[k], s.value) if k in out else s.value
    return out


def _total(scrapes: Sequence[Scrape], name: str) -> float:
    return sum(_fold(scrapes, name, ()).values())


def _by(scrapes: Sequence[Scrape], name: str, key: str) -> dict[str, float]:
    return {k[0]: v for k, v in sorted(_fold(scrapes, name, (key,)).items())}


def summarize(scrapes: Sequence[Scrape], top: int = 5) -> dict[str, Any]:
    """Fold scrapes of one or more processes into the status summary (plain JSON-able dict)."""
    ok = [s for s in scrapes if s.up]
    events_in = _total(ok, "riskguard_events_in_total")
    dead = _total(ok, "riskguard_dead_letters_total")
    lag = _by(ok, "riskguard_kafka_consumer_lag", "stream") or _by(
        ok, "bytewax_kafka_consumer_lag", "topic")
    episodes = _by(ok, "riskguard_episodes_open", "key_class")
    util = _fold(ok, "riskguard_limit_utilization", ("counterparty", "limit", "kind"), max)
    ranked = sorted(util.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][2]))
    utils = [{"counterparty": c, "limit": lim, "kind": k, "utilization": v}
             for (c, lim, k), v in ranked]
    ages = [s.value for sc in ok for s in sc.samples
            if s.name == "riskguard_audit_checkpoint_age_seconds"]
    lat_n = _total(ok, "riskguard_detection_to_command_seconds_count")
    lat_sum = _total(ok, "riskguard_detection_to_command_seconds_sum")
    return {
        "health": {
            "up": bool(scrapes) and len(ok) == len(scrapes),
            "targets": [{"url": s.url, "up": s.up, "error": s.error} for s in scrapes],
            "events_in": events_in,
            "events_out": _total(ok, "riskguard_events_out_total"),
            "dead_letters": dead,
            "dead_letter_ratio": min(dead / events_in, 1.0) if events_in else 0.0,
            "delivery_errors": _total(ok, "riskguard_kafka_delivery_errors_total"),
        },
        "lag": {"total": sum(lag.values()), "by_stream": lag} if lag else None,
        "episodes_open": {"total": sum(episodes.values()), "by_class": episodes},
        "commands": _commands(ok),
        "acks": _acks(ok),
        "breaches": _by(ok, "riskguard_limit_breaches_total", "level"),
        "utilizations": utils[:top],
        "feeds": {
            "on_backup": sorted(v for (v,), x in _fold(
                ok, "riskguard_feed_failover_state", ("venue",), max).items() if x >= 1),
            "stale": sorted(v for (v,), x in _fold(
                ok, "riskguard_feed_stale", ("venue",), max).items() if x >= 1),
        },
        "rejections": _by(ok, "riskguard_subscriber_rejections_total", "reason"),
        "checkpoint_age_s": min(ages) if ages else None,
        "detection_to_command_mean_s": lat_sum / lat_n if lat_n else None,
    }


def _commands(ok: Sequence[Scrape]) -> dict[str, Any]:
    """The commands issued, by action and by action and scope kind (with the last's
    time)."""
    commands = _fold(ok, "riskguard_commands_total", ("action", "scope_kind"))
    last = _fold(ok, "riskguard_last_command_timestamp_seconds", ("action", "scope_kind"), max)
    by_action: dict[str, float] = {}
    for (action, _), n in sorted(commands.items()):
        by_action[action] = by_action.get(action, 0.0) + n
    return {
        "total": sum(by_action.values()),
        "by_action": by_action,
        "by_action_scope": [
            {"action": a, "scope_kind": k, "count": n, "last_ts": last.get((a, k))}
            for (a, k), n in sorted(commands.items())
        ],
    }


def _acks(ok: Sequence[Scrape]) -> dict[str, Any]:
    """What executors said about the commands (the guard's acks topic)."""
    acks = _fold(ok, "riskguard_command_acks_total", ("action", "outcome"))
    alerts = _fold(ok, "riskguard_risk_alerts_total", ("kind", "severity"))
    return {
        "acknowledged": sum(n for (_a, o), n in acks.items()
                            if o in ("applied", "already_applied")),
        "refused": sum(n for (_a, o), n in acks.items() if o in ("refused", "failed")),
        "unacknowledged": sum(n for (k, _s), n in alerts.items()
                              if k == "command_unacknowledged"),
        "by_action_outcome": [{"action": a, "outcome": o, "count": n}
                              for (a, o), n in sorted(acks.items())],
    }


def _num(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.4g}"


def render_text(s: dict[str, Any], width: int = 30) -> str:
    """The one-screen text summary."""
    h = s["health"]
    lines = []
    state = "UP" if h["up"] else "DOWN"
    down = [t["url"] + " (" + t["error"] + ")" for t in h["targets"] if not t["up"]]
    lines.append(f"health      {state}  targets {len(h['targets']) - len(down)}/"
                 f"{len(h['targets'])} up" + (f"  down: {', '.join(down)}" if down else ""))
    lines.append(f"events      in {_num(h['events_in'])}  out {_num(h['events_out'])}  "
                 f"dead-lettered {_num(h['dead_letters'])} "
                 f"({h['dead_letter_ratio'] * 100:.2f}%)  "
                 f"delivery errors {_num(h['delivery_errors'])}")
    lag = s["lag"]
    lines.append("lag         " + ("not exposed" if lag is None else
                                   f"{_num(lag['total'])} messages " + "  ".join(
                                       f"{k}={_num(v)}" for k, v in lag["by_stream"].items())))
    ep = s["episodes_open"]
    lines.append(f"episodes    {_num(ep['total'])} open  " + "  ".join(
        f"{k}={_num(v)}" for k, v in ep["by_class"].items()))
    cmds = s["commands"]  # issued since start, lifted ones included
    lines.append(f"commands    {_num(cmds['total'])} issued  " + "  ".join(
        f"{k}={_num(v)}" for k, v in cmds["by_action"].items()))
    acks = s["acks"]
    lines.append(f"executors   acknowledged {_num(acks['acknowledged'])}  refused "
                 f"{_num(acks['refused'])}  unconfirmed in time {_num(acks['unacknowledged'])}")
    feeds = s["feeds"]
    lines.append(f"feeds       on backup: {', '.join(feeds['on_backup']) or 'none'}  "
                 f"stale: {', '.join(feeds['stale']) or 'none'}")
    age = s["checkpoint_age_s"]
    lines.append("audit       " + ("no checkpoint age exposed" if age is None
                                   else f"last checkpoint {age:.0f} s ago"))
    if s["breaches"]:
        lines.append("breaches    " + "  ".join(f"{k}={_num(v)}" for k, v in s["breaches"].items()))
    lines.append("top utilizations")
    if not s["utilizations"]:
        lines.append("  (none)")
    for u in s["utilizations"]:
        filled = min(round(u["utilization"] * width), width)
        bar = "#" * filled + "." * (width - filled)
        lines.append(f"  {u['limit'] + ' ' + u['kind']:<40} [{bar}] {u['utilization'] * 100:6.1f}%")
    return "\n".join(lines) + "\n"


def split_mitigations(commands: Iterable[MitigationCommand], now_ns: int,
                      max_history: int = 100) -> dict[str, list[dict[str, Any]]]:
    """Mitigations in force at ``now_ns`` (``active``) apart from every command (``history``).

    A held action (:data:`~riskguard.schemas.action_params.HELD_ACTIONS`) is in force from
    its issue until a later ``resume`` on the same scope lifts it (its action among the
    resume's ``actions`` and its id among its ``resumes``, each where given), as an
    executor holds it: its ``expires_at`` only
    bounds when an executor may still accept it. Every other action is a one-off act.
    ``active`` has one entry per action and scope (the latest issued); ``history`` lists
    every command issued, newest first, each with its ``state``: ``active``, ``lifted``,
    ``act``, ``resume`` or ``alert``.

    >>> from riskguard.schemas import Audience, Scope, ScopeKind
    >>> aud, okx = Audience(env="dev", topic="t"), Scope(kind=ScopeKind.VENUE, value="okx")
    >>> def c(i, a, t, **p):
    ...     return MitigationCommand(command_id=f"c{i}", issuer="e", issued_at=t,
    ...         expires_at=t + 100, audience=aud, action=a, scope=okx, params=p, reason="r")
    >>> m = split_mitigations([c(1, Action.HALT_TRADING, 0), c(2, Action.WIDEN_QUOTES, 10),
    ...                        c(3, Action.RESUME, 20, actions=["halt_trading"]),
    ...                        c(4, Action.CANCEL_ALL, 25)], now_ns=500)
    >>> [(x["action"], x["scope"]) for x in m["active"]]
    [('widen_quotes', 'venue:okx')]
    >>> [(x["command_id"], x["state"]) for x in m["history"]]
    [('c4', 'act'), ('c3', 'resume'), ('c2', 'active'), ('c1', 'lifted')]
    """
    issued = sorted((c for c in commands if c.issued_at <= now_ns),
                    key=lambda c: (c.issued_at, c.seq, c.command_id))
    rows: list[dict[str, Any]] = []
    in_force: dict[str, list[dict[str, Any]]] = {}  # scope label -> its rows not yet lifted
    for c in issued:
        label = c.scope.label()
        row = {"command_id": c.command_id, "action": c.action.value, "scope": label,
               "issued_at": c.issued_at / 1e9, "expires_at": c.expires_at / 1e9,
               "reason": c.reason, "state": "", "lifted_by": None}
        rows.append(row)
        if c.action is Action.RESUME:
            row["state"] = "resume"
            keep = []
            for r in in_force.get(label, []):
                if _lifts(c, r["action"], r["command_id"]):
                    r["state"], r["lifted_by"] = "lifted", c.command_id
                else:
                    keep.append(r)
            in_force[label] = keep
        elif c.action is Action.ALERT:
            row["state"] = "alert"
        elif c.action.value in HELD_ACTIONS:
            row["state"] = "active"
            in_force.setdefault(label, []).append(row)
        else:
            row["state"] = "act"
    best = {(r["action"], r["scope"]): r for r in rows if r["state"] == "active"}
    active = sorted(best.values(), key=lambda r: (r["scope"], r["action"]))
    return {"active": active, "history": rows[::-1][:max_history]}


def _lifts(resume: MitigationCommand, action: str, command_id: str) -> bool:
    """Whether ``resume`` (on the held command's scope) lifts it, as an executor does."""
    acts, ids = resume.params.get("actions"), resume.params.get("resumes")
    return resume_lifts(acts if isinstance(acts, list) else (),
                        ids if isinstance(ids, list) else (), action, command_id)


MAX_COMMANDS = 10_000
"""Commands :func:`commands_from_file` keeps beyond those still in force: the newest."""
MAX_LINE = 1 << 20
"""A line of the commands file longer than this is no envelope, and is skipped."""


def _pruned(commands: list[MitigationCommand]) -> list[MitigationCommand]:
    """The newest :data:`MAX_COMMANDS`, and of the older ones those still in force: the
    last held command of each action and scope, where no newer one of them and no resume
    lifting it came since (bounded by the scopes and held actions the guard uses)."""
    old, recent = commands[:-MAX_COMMANDS], commands[-MAX_COMMANDS:]
    holding: dict[tuple[str, str], MitigationCommand] = {}
    for c in commands:  # a newer command of the same action and scope supersedes it
        label = c.scope.label()
        if c.action is Action.RESUME:
            for key in [k for k, held in holding.items()
                        if k[0] == label and _lifts(c, k[1], held.command_id)]:
                del holding[key]
        elif c.action.value in HELD_ACTIONS:
            holding[(label, c.action.value)] = c
    kept = {id(c) for c in holding.values()}
    return [c for c in old if id(c) in kept] + recent


def commands_from_file(path: str, key: VerifyKey) -> Callable[[], list[MitigationCommand]]:
    """A command source for :class:`StatusPoller`: the signed command envelopes in
    ``path``, one per line (a guard's ``commands.jsonl``), read as the file grows.

    Only commands signed with ``key`` count: any other line is skipped, so it can neither
    show a mitigation as active nor lift one. A missing file is no commands yet. Each poll
    reads only the lines added since the last (a file that shrank is read again from its
    start), and the commands kept are bounded (:func:`_pruned`).
    """
    kept: list[MitigationCommand] = []
    where: dict[str, Any] = {"offset": 0, "partial": b"", "skipping": False}

    def verified(raw: bytes) -> MitigationCommand | None:
        try:
            env = decode_envelope(raw)
            ours = [x for x in env.signatures if x.key_id == key.key_id]
            if env.payload_type != PAYLOAD_COMMAND or not ours:
                return None
            key.verify(PAYLOAD_COMMAND, env.payload, ours[0].sig)
            return decode_command(env) if check_json_depth(env.payload) is None else None
        except Exception:  # whatever cannot be read and verified is skipped
            return None

    def read() -> list[MitigationCommand]:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < where["offset"]:  # replaced or truncated: from its start
                    kept.clear()
                    where.update(offset=0, partial=b"", skipping=False)
                f.seek(where["offset"])
                added = f.read(size - where["offset"])
        except FileNotFoundError:
            kept.clear()
            where.update(offset=0, partial=b"", skipping=False)
            return []
        where["offset"] += len(added)
        *lines, partial = (where["partial"] + added).split(b"\n")
        if where["skipping"] and lines:  # the rest of a line too long to be one
            lines, where["skipping"] = lines[1:], False
        for raw in lines:
            cmd = verified(raw.rstrip(b"\r"))
            if cmd is not None:
                kept.append(cmd)
        last = verified(partial) if partial and not where["skipping"] else None
        if last is not None:  # a whole last line without its newline
            kept.append(last)
            partial = b""
        elif len(partial) > MAX_LINE:
            partial, where["skipping"] = b"", True
        where["partial"] = partial
        if len(kept) > 2 * MAX_COMMANDS:
            kept[:] = _pruned(kept)
        return list(kept)

    return read


class StatusPoller:
    """Scrapes the endpoints on demand and keeps a command timeline between scrapes.

    ``commands`` (optional) returns the mitigation commands issued so far; with it the
    summary's ``mitigations`` holds the ones in force now apart from the history
    (:func:`split_mitigations`), else None (the metrics only count commands issued).
    """

    def __init__(self, urls: Sequence[str], *, top: int = 10, timeout_s: float = 5.0,
                 max_timeline: int = 100, now: Callable[[], float] = time.time,
                 commands: Callable[[], Iterable[MitigationCommand]] | None = None) -> None:
        self.urls = list(urls)
        self.top = top
        self.timeout_s = timeout_s
        self.max_timeline = max_timeline
        self.now = now
        self.commands = commands
        self.timeline: list[dict[str, Any]] = []
        self._prev: dict[tuple[str, str], float] | None = None
        self._lock = threading.Lock()

    def poll(self) -> dict[str, Any]:
        """Scrape every endpoint and return the summary with the timeline (newest first)."""
        with self._lock:
            summary = summarize([scrape(u, self.timeout_s) for u in self.urls], top=self.top)
            at = self.now()
            counts = {(c["action"], c["scope_kind"]): c for c in
                      summary["commands"]["by_action_scope"]}
            for key, c in sorted(counts.items(), key=lambda kv: kv[1]["last_ts"] or at):
                before = 0.0 if self._prev is None else self._prev.get(key, 0.0)
                if c["count"] > before:
                    self.timeline.insert(0, {
                        "ts": c["last_ts"] or at, "action": key[0], "scope_kind": key[1],
                        "count": c["count"] - before, "initial": self._prev is None,
                    })
            if summary["health"]["up"]:
                self._prev = {k: c["count"] for k, c in counts.items()}
            del self.timeline[self.max_timeline:]
            summary["timeline"] = list(self.timeline)
            summary["mitigations"] = (
                None if self.commands is None else
                split_mitigations(self.commands(), int(at * 1e9), self.max_timeline))
            summary["scraped_at"] = at
            return summary


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>riskguard status</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em;margin:0 0 .6em} h2{font-size:1em;margin:1.2em 0 .4em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:.6em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em}
.card b{display:block;font-size:1.4em}
.up{color:#1a7f37}.down{color:#cf222e}
.util{display:grid;grid-template-columns:18em 1fr 5em;gap:.5em;align-items:center;margin:.2em 0}
.bar{background:#eee;height:1em;border-radius:3px;overflow:hidden}
.fill{height:100%;background:#2da44e}.warn .fill{background:#bf8700}.hot .fill{background:#cf222e}
ol,ul{margin:.2em 0;padding-left:1.4em} small{color:#666}
li,.util span{overflow-wrap:break-word;min-width:0}
</style></head>
<body data-polls="0">
<h1>riskguard status <small id="scraped"></small></h1>
<div class="grid">
 <div class="card">health<b id="health">?</b><small id="targets"></small></div>
 <div class="card">events in<b id="events-in">?</b></div>
 <div class="card">dead-lettered<b id="dead-letters">?</b><small id="dl-ratio"></small></div>
 <div class="card">consumer lag<b id="lag">?</b></div>
 <div class="card">open episodes<b id="episodes-open">?</b>
  <small id="episodes-by-class"></small></div>
 <div class="card">commands<b id="commands-total">?</b>
  <small id="commands-acks"></small></div>
 <div class="card">checkpoint age<b id="checkpoint-age">?</b></div>
 <div class="card">feeds on backup<b id="feeds-backup">?</b></div>
</div>
<h2>Active mitigations <small>(in force now)</small></h2><ul id="mitigations"></ul>
<h2>Mitigation history <small>(every command, newest first)</small></h2><ol id="history"></ol>
<h2>Commands issued <small>(counts since start, from the metrics)</small></h2>
<ul id="issued"></ul>
<h2>Top utilizations</h2><div id="utilizations"></div>
<h2>Command timeline</h2><ol id="timeline"></ol>
<script>
"use strict";
const POLL_MS = __POLL_MS__;
function fmt(x){return Number.isInteger(x)?String(x):(+x.toPrecision(4)).toString();}
function el(tag, attrs, text){const e=document.createElement(tag);
  for(const k in attrs){e.setAttribute(k, attrs[k]);} if(text!==undefined){e.textContent=text;}
  return e;}
function set(id, text){document.getElementById(id).textContent=text;}
function render(s){
  const h=s.health;
  const he=document.getElementById("health");
  he.textContent=h.up?"UP":"DOWN"; he.className=h.up?"up":"down";
  set("targets", h.targets.filter(t=>t.up).length+"/"+h.targets.length+" targets up");
  set("events-in", fmt(h.events_in));
  set("dead-letters", fmt(h.dead_letters));
  set("dl-ratio", (h.dead_letter_ratio*100).toFixed(2)+"%");
  set("lag", s.lag===null?"not exposed":fmt(s.lag.total));
  set("episodes-open", fmt(s.episodes_open.total));
  set("episodes-by-class", Object.entries(s.episodes_open.by_class)
      .map(([k,v])=>k+"="+fmt(v)).join(" "));
  set("commands-total", fmt(s.commands.total));
  set("commands-acks", "acknowledged "+fmt(s.acks.acknowledged)+", refused "
      +fmt(s.acks.refused)+", unconfirmed in time "+fmt(s.acks.unacknowledged));
  set("checkpoint-age", s.checkpoint_age_s===null?"n/a":Math.round(s.checkpoint_age_s)+" s");
  set("feeds-backup", s.feeds.on_backup.length?s.feeds.on_backup.join(", "):"none");
  const m=document.getElementById("mitigations"); m.replaceChildren();
  const hi=document.getElementById("history"); hi.replaceChildren();
  const when=ts=>new Date(ts*1000).toISOString().replace("T"," ").slice(0,19);
  if(s.mitigations===null||s.mitigations===undefined){
    m.appendChild(el("li", {"class":"unknown"}, "not known: no command source "
      +"(the counts below are every command issued, lifted ones included)"));
    hi.appendChild(el("li", {"class":"unknown"}, "not known: no command source"));
  }else{
    if(!s.mitigations.active.length){m.appendChild(el("li", {"class":"none"}, "none"));}
    for(const x of s.mitigations.active){
      m.appendChild(el("li", {"data-action":x.action, "data-scope":x.scope,
        "data-command-id":x.command_id}, x.action+" on "+x.scope+" since "+when(x.issued_at)
        +" UTC, until a resume: "+x.reason));}
    for(const x of s.mitigations.history){
      hi.appendChild(el("li", {"data-action":x.action, "data-scope":x.scope,
        "data-command-id":x.command_id, "data-state":x.state}, when(x.issued_at)+"  "
        +x.action+" on "+x.scope+" ["+x.state+(x.lifted_by?" by "+x.lifted_by:"")+"]: "
        +x.reason));}
  }
  const is=document.getElementById("issued"); is.replaceChildren();
  for(const [a,n] of Object.entries(s.commands.by_action)){
    is.appendChild(el("li", {"data-action":a, "data-count":String(n)}, a+": "+fmt(n)));}
  const u=document.getElementById("utilizations"); u.replaceChildren();
  for(const x of s.utilizations){
    const pct=x.utilization*100;
    const row=el("div", {"class":"util"+(pct>=100?" hot":pct>=80?" warn":""),
      "data-limit":x.limit, "data-kind":x.kind, "data-value":String(x.utilization)});
    row.appendChild(el("span", {}, x.limit+" "+x.kind));
    const bar=el("div", {"class":"bar"});
    bar.appendChild(el("div", {"class":"fill", "style":"width:"+Math.min(pct,100)+"%"}));
    row.appendChild(bar); row.appendChild(el("span", {"class":"pct"}, pct.toFixed(1)+"%"));
    u.appendChild(row);}
  const t=document.getElementById("timeline"); t.replaceChildren();
  for(const e of s.timeline){
    const when=new Date(e.ts*1000).toISOString().replace("T"," ").slice(0,19);
    t.appendChild(el("li", {"data-action":e.action, "data-scope":e.scope_kind,
      "data-count":String(e.count)}, when+"  "+e.action+" ("+e.scope_kind+") x"+fmt(e.count)
      +(e.initial?" (since start)":"")));}
  set("scraped", "scraped "+new Date(s.scraped_at*1000).toISOString());
  document.body.dataset.polls=String(Number(document.body.dataset.polls)+1);
}
async function poll(){
  try{const r=await fetch("api/status",{cache:"no-store"}); render(await r.json());}
  catch(e){const he=document.getElementById("health"); he.textContent="UNREACHABLE";
    he.className="down";}
  setTimeout(poll, POLL_MS);
}
poll();
</script></body></html>
"""


def page(poll_ms: int = 2000) -> bytes:
    """The self-contained status page (inline CSS and JS; no external assets)."""
    return PAGE.replace("__POLL_MS__", str(int(poll_ms))).encode()


class _BoundedServer(BoundedConnections, ThreadingHTTPServer):
    """A thread per connection, at most ``limit`` at once: one more is closed at once
    (and counted in ``refused``)."""

    def __init__(self, address: tuple[str, int], handler: Any, limit: int) -> None:
        self.max_connections = limit
        super().__init__(address, handler)


class _Shared:
    """One poll's answer, shared by every request within ``fresh_s`` of it: many clients
    (or one looping) scrape the endpoints at most once per ``fresh_s``."""

    def __init__(self, poll: Callable[[], dict[str, Any]], fresh_s: float) -> None:
        self._poll, self._fresh_s = poll, fresh_s
        self._lock = threading.Lock()
        self._at = -math.inf
        self._data = b""

    def get(self) -> bytes:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self._fresh_s:
                self._data = json.dumps(self._poll(), sort_keys=True).encode()
                self._at = now
            return self._data


class StatusServer:
    """Serves ``/`` (the page; ``body`` replaces it, e.g. with a measuring script added),
    ``/api/status`` (JSON summary; requests within half a poll period, at most a second,
    share one scrape) and ``/healthz``.

    At most ``max_connections`` connections are served at once (one more is closed), and
    a connection that sends nothing for ``idle_timeout_s``, or is still open three times
    that long, is closed: idle or slow clients cannot take every thread."""

    def __init__(self, poller: StatusPoller, *, host: str = "127.0.0.1", port: int = 0,
                 poll_ms: int = 2000, body: bytes | None = None, max_connections: int = 32,
                 idle_timeout_s: float = 10.0) -> None:
        html = page(poll_ms) if body is None else body
        status = _Shared(poller.poll, min(poll_ms, 2000) / 2000)

        class Handler(ConnectionDeadline, BaseHTTPRequestHandler):
            # each read, and the whole connection at three times it: a client trickling
            # bytes cannot keep its slot past the deadline
            timeout = idle_timeout_s

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", html)
                elif path == "/api/status":
                    self._send(200, "application/json", status.get())
                elif path == "/healthz":
                    self._send(200, "text/plain", b"ok\n")
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, ctype: str, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # base signature
                return

        self.httpd = _BoundedServer((host, port), Handler, max_connections)
        self.port = int(self.httpd.server_address[1])
        self._thread: threading.Thread | None = None

    def start(self) -> StatusServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
