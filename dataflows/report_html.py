"""The report page: one self-contained HTML page per run (inline SVG, no scripts).

It is written for a reader who has not run the command: it opens with what happened, in
sentences (the data, the alarms, the commands and the strongest mitigation, whether each
command verified and was acknowledged, whether alarms could be scored, which detectors
could fire), then a timeline of alarms and commands in UTC, the plots, the scores, the
commands and the detectors per key. Everything it shows is in ``report.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from riskguard.dataflows.readiness import duration, utc
from riskguard.dataflows.report_plots import esc, plots

NS = 1_000_000_000
MAX_TIMELINE = 300
CSS = (
    "body{font-family:sans-serif;margin:20px;color:#222;max-width:1800px}"
    "table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;"
    "padding:3px 7px;font-size:12px;text-align:left;overflow-wrap:break-word;"
    "vertical-align:top}th{background:#f0f0f0}"
    "#story li{margin:4px 0;line-height:1.4}code{overflow-wrap:anywhere;font-size:12px;"
    "background:#f5f5f5;padding:0 3px}"
    ".tick{font-size:10px;fill:#444}.ptitle{font-size:12px;font-weight:bold}"
    "p.nodata{margin:2px 0 10px}figure.plot{margin:6px 0 14px}"
    "svg.plot{display:block;width:100%;height:auto}"
    ".legend{display:flex;flex-wrap:wrap;gap:2px 16px;list-style:none;margin:2px 0 0 "
    "70px;padding:0;font-size:12px}.legend li{overflow-wrap:anywhere;min-width:0}"
    ".sw{display:inline-block;width:12px;height:4px;margin-right:5px;"
    "vertical-align:middle}.bad{color:#b00000;font-weight:bold}.note,.run-info{color:#555}"
)


def _table(tid: str, head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    h = "".join(f"<th>{esc(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(x))}</td>" for x in r) + "</tr>"
                   for r in rows)
    return f'<table id="{tid}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(x: Any) -> str:
    """A cell's value: ``-`` for none, a large number with thousands separators (never in
    scientific notation), else four significant digits."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return str(x)


def _n(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda x: -x[1]))


# -- what happened ---------------------------------------------------------------------


def story(rep: dict[str, Any]) -> list[str]:
    """What happened, in sentences (HTML, escaped)."""
    return [x for x in (_data(rep), _alarms(rep), _commands(rep), _verified(rep),
                        _acks(rep), _labels(rep), *_detectors(rep)) if x]


def _data(rep: dict[str, Any]) -> str:
    s = rep["summary"]
    markets = s.get("markets", [])
    shown = ", ".join(markets[:6]) + (f" and {len(markets) - 6} more" if len(markets) > 6
                                      else "")
    span = (f"from {utc(s['start_ns'])} to {utc(s['end_ns'])} "
            f"({duration(s['end_ns'] - s['start_ns'])})" if s["events"] else "")
    files = f" in {', '.join(rep['inputs'])}" if rep["inputs"] else ""
    text = (f"<b>Data:</b> {_n(s['events'], 'record')} of {_n(s['instruments'], 'market')}"
            f"{' (' + esc(shown) + ')' if shown else ''}{esc(files)}, {esc(span)}.")
    if s["dead_letters"]:
        text += (f' <span class="bad">{_n(s["dead_letters"], "record")} could not be used'
                 "</span> (dead letters, with their reasons, in dead_letters.jsonl).")
    return text


def event_what(e: dict[str, Any]) -> str:
    """What a timeline entry is, with its severity: ``anomaly open (warn)``, and
    ``warming up`` where the detector was (report.py's ``events_of``)."""
    return f"{e['what']} ({e['severity']}{', warming up' if e.get('warming_up') else ''})"


def _alarms(rep: dict[str, Any]) -> str:
    alarms = [e for e in rep["events"] if e.get("alarm")]
    info = Counter(e["what"].removesuffix(" open") for e in rep["events"]
                   if e["severity"] == "info" and not e.get("alarm")
                   and not e["what"].endswith(("close", "escalate")))
    besides = (f" Info-level signals, shown in the timeline but not alarms: "
               f"{esc(_counts(dict(info)))}." if info else "")
    if not alarms:
        return f"<b>Alarms:</b> the guard raised none (nothing at warn or critical).{besides}"
    first = alarms[0]
    kinds = _counts(rep.get("alarms_by_signal", {}))
    return (f"<b>Alarms:</b> the guard raised {_n(rep['summary']['alarms'], 'alarm')} "
            f"({esc(kinds)}); the first at {esc(utc(first['t']))}: {esc(event_what(first))} "
            f"on {esc(first['scope'])}.{besides}")


def _commands(rep: dict[str, Any]) -> str:
    log = rep["command_log"]
    if not log:
        return "<b>What the guard did:</b> it issued no command."
    text = (f"<b>What the guard did:</b> it issued {_n(len(log), 'signed command')} "
            f"({esc(_counts(rep['commands']['by_action']))}).")
    strongest = _strongest(rep)
    if strongest:
        state, scope, t0, t1 = strongest
        until = f"to {utc(t1)}" if t1 is not None else "to the end of the data"
        text += (f" The strongest, {esc(state)} on {esc(scope)}, was in force from "
                 f"{esc(utc(t0))} {esc(until)}.")
    return text


def _strongest(rep: dict[str, Any]) -> tuple[str, str, int, int | None] | None:
    """The most severe mitigation state any scope reached: the state, the scope, from when
    and until when (None: the end of the data)."""
    from riskguard.dataflows.report import STATE_ORDER  # noqa: PLC0415  (cycle)

    rank = {s: i for i, s in enumerate(STATE_ORDER)}
    changes = rep.get("state_changes", [])
    best = max((c for c in changes if c[2] != "normal"), key=lambda c: (rank[c[2]], -c[0]),
               default=None)
    if best is None:
        return None
    t0, scope, state = best
    after = next((c[0] for c in changes if c[1] == scope and c[0] > t0 and c[2] != state),
                 None)
    return state, scope, t0, after


def _verified(rep: dict[str, Any]) -> str:
    log = rep["command_log"]
    if not log:
        return ""
    bad = [c for c in log if c.get("verified") != "verified"]
    if not bad:
        return (f"<b>Verified:</b> every command ({len(log):,}) verified against the trust "
                "file as an executor verifies it: signature, key and its rights, audience, "
                "lifetime.")
    return (f'<b>Verified:</b> <span class="bad">{len(bad):,} of {len(log):,} commands did '
            f"not verify</span> ({esc(bad[0]['verified'])} first); executors would refuse them.")


def _acks(rep: dict[str, Any]) -> str:
    log = rep["command_log"]
    if not log:
        return ""
    acked = [c for c in log if " by " in c.get("ack", "")]
    missing = [c for c in log if c.get("ack", "").startswith("NOT")]
    if not acked and all(c.get("ack", "").startswith("not awaited") for c in log):
        return ("<b>Acknowledged:</b> none was awaited, so none was: no executor is named in "
                "[playbook.acks] and the input holds no acknowledgements (live, executors "
                "answer each command with a signed ack; docs/executors.md).")
    text = f"<b>Acknowledged:</b> {len(acked):,} of {len(log):,} commands by an executor."
    if missing:
        text += (f' <span class="bad">{_n(len(missing), "required command")} '
                 f"{'was' if len(missing) == 1 else 'were'} not acknowledged</span> (the "
                 f"timeline names {'it' if len(missing) == 1 else 'them'}).")
    return text


def _labels(rep: dict[str, Any]) -> str:
    alarms = rep["summary"]["alarms"]
    if rep.get("labelled", True):
        a = rep["episodes"]["all"]
        return (f"<b>Scored against {_n(a['labels'], 'labelled incident')}:</b> "
                f"{a['detected']} detected (recall {_fmt(a['recall'])}), precision "
                f"{_fmt(a['precision'])}, {_n(rep['false_alarms']['count'] or 0, 'false alarm')}.")
    return (f"<b>Not scored:</b> {_unlabelled(alarms)} To score "
            f"{'it' if alarms == 1 else 'them' if alarms else 'a run'}, rerun with "
            f"<code>--labels labels.json</code> holding the incidents, e.g. "
            f"<code>{esc(labels_example(rep))}</code> (docs/backtests.md).")


def _unlabelled(alarms: int) -> str:
    """That ``alarms`` alarms went unjudged, in a sentence whose verbs agree with it.

    >>> _unlabelled(1)
    'no labels were given, so the one alarm is unlabelled: it is counted neither true nor false.'
    """
    if alarms == 0:
        return "no labels were given, and the guard raised no alarm to judge."
    if alarms == 1:
        return ("no labels were given, so the one alarm is unlabelled: it is counted neither "
                "true nor false.")
    return (f"no labels were given, so the {alarms:,} alarms are unlabelled: none is counted "
            "true or false.")


def labels_example(rep: dict[str, Any]) -> str:
    """A labels file for this run: its first market, an hour from its first alarm (else
    from the start of the data)."""
    markets = rep["summary"].get("markets") or ["binance/BTCUSDT"]
    events = [e for e in rep["events"] if e.get("alarm")] or rep["events"]
    start = events[0]["t"] if events else rep["summary"]["start_ns"]
    scope = events[0]["scope"] if events else f"instrument:{markets[0]}"

    def iso(t: int) -> str:
        return utc(t).replace(" UTC", "Z").replace(" ", "T")

    return json.dumps({"incidents": [{"kind": "crash", "scope": scope, "start": iso(start),
                                      "end": iso(start + 3600 * NS)}]})


def _detectors(rep: dict[str, Any]) -> list[str]:
    ready = rep.get("readiness")
    if not ready:
        return []
    lines = ready["lines"]
    return [f"<b>Detectors:</b> {esc(lines[0].removeprefix('detectors: '))}",
            *(esc(line.strip()) for line in lines[1:])]


# -- tables ------------------------------------------------------------------------------


def _timeline_rows(rep: dict[str, Any]) -> list[list[Any]]:
    rows: list[tuple[int, int, list[Any]]] = []
    for e in rep["events"]:
        rows.append((e["t"], 0, [utc(e["t"]), "alarm" if e.get("alarm") else "signal",
                                 event_what(e), e["scope"], e["detail"], "", ""]))
    for c in rep["command_log"]:
        params = json.dumps(c["params"], sort_keys=True) + "; " if c["params"] else ""
        rows.append((c["t"], 1, [utc(c["t"]), "command", c["action"], c["scope"],
                                 params + _short(c["reason"]), c["verified"], c["ack"]]))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [r[2] for r in rows]


def _short(text: str, most: int = 200) -> str:
    """``text`` cut at a word before ``most`` characters (the command log has it whole)."""
    if len(text) <= most:
        return text
    return text[:most].rsplit(" ", 1)[0] + " ..."


def _score_tables(rep: dict[str, Any]) -> list[str]:
    if not rep.get("labelled", True):
        return ["<h2>Alarms (unlabelled)</h2>",
                '<p class="note">No labels: an alarm is neither true nor false here.</p>',
                _table("t-unlabelled", ["signal", "alarms"],
                       sorted(rep.get("alarms_by_signal", {}).items()))]
    ep = rep["episodes"]
    rows = [[k, v["labels"], v["detected"], v["true_alarms"], v["false_alarms"],
             v["precision"], v["recall"], v["f1"], v["detection_delay_s"]["p50"],
             v["detection_delay_s"]["p95"]] for k, v in [*ep["by_kind"].items(),
                                                        ("all", ep["all"])]]
    dd, md, fa = rep["detection_delay_s"], rep["mitigation_delay_s"], rep["false_alarms"]
    return [
        "<h2>Episodes per incident kind</h2>",
        _table("t-episodes", ["kind", "incidents", "detected", "true alarms", "false alarms",
                              "precision", "recall", "F1", "delay p50 s", "delay p95 s"], rows),
        "<h2>Delays and false alarms</h2>",
        _table("t-delays", ["measure", "n", "p50 s", "p95 s"],
               [["detection delay", dd["n"], dd["p50"], dd["p95"]],
                ["mitigation delay", md["n"], md["p50"], md["p95"]]]),
        _table("t-false", ["false alarms", "instrument-days", "per instrument-day"],
               [[fa["count"], fa["instrument_days"], fa["per_instrument_day"]]]),
    ]


def _state_table(rep: dict[str, Any]) -> str:
    from riskguard.dataflows.report import STATE_ORDER  # noqa: PLC0415  (cycle)

    states = rep["mitigation_states"]
    cols = [x for x in STATE_ORDER if any(x in v for v in states["by_scope"].values())
            or x in states["worst"]]
    return _table("t-states", ["scope", *cols],
                  [[lab, *[duration(int(v.get(c, 0.0) * NS)) for c in cols]]
                   for lab, v in [("(firm worst)", states["worst"]),
                                  *states["by_scope"].items()]])


def _detector_table(rep: dict[str, Any]) -> list[str]:
    ready = rep.get("readiness")
    if not ready:
        return []
    rows = [[key, p["part"], utc(p["live_from"]) if p["live_from"] is not None else "never",
             p["needs"], p["why"]] for key, parts in ready["keys"].items() for p in parts]
    return ["<h2>Detectors per key</h2>",
            '<p class="note">When each part of the detection could first fire on each key '
            "(riskguard explain tells it for any moment of the data).</p>",
            _table("t-detectors", ["key", "part", "live from", "needs", "why not"],
                   rows[:600])]


def render_html(rep: dict[str, Any]) -> str:
    """The self-contained report page (inline SVG, no scripts, no external files)."""
    s = rep["summary"]
    t0, t1 = s["start_ns"], max(s["end_ns"], s["start_ns"] + 1)
    run = rep["run"]
    timeline = _timeline_rows(rep)
    sections = [
        f"<h1>{esc(rep['title'])}</h1>",
        "<h2>What happened</h2>",
        '<ul id="story">' + "".join(f"<li>{x}</li>" for x in story(rep)) + "</ul>",
        _table("t-summary", ["events", "duration", "instruments", "signals", "alarms",
                             "commands", "dead letters", "labels", "config"],
               [[s["events"], duration(int(s["duration_s"] * NS)), s["instruments"],
                 s["signals"], s["alarms"], s["commands"], s["dead_letters"], s["labels"],
                 rep["config_hash"][:12]]]),
    ]
    if "stress" in rep:
        st = rep["stress"]
        sections.append(f'<h2>Stress scenario {esc(st["scenario"])}: '
                        f'<span id="verdict">{"PASS" if st["passed"] else "FAIL"}</span></h2>')
        sections.append(_table("t-expect", ["expected", "scope", "deadline s", "actual s",
                                            "result", "detail"],
                               [[e["action"], e["scope"], e["deadline_s"], e["actual_s"],
                                 e["result"], e["detail"]] for e in st["checks"]]))
    more = (f'<p class="note">The first {MAX_TIMELINE} of {len(timeline):,} entries; every '
            "signal is in signals.jsonl, every command in commands.jsonl.</p>"
            if len(timeline) > MAX_TIMELINE else "")
    sections += [
        "<h2>Timeline (UTC)</h2>",
        '<p class="note">An alarm is the moment an episode first reaches warn or critical '
        "with its detector live (each episode counts once); its other phases, and info-level "
        "signals, are listed as signals. An episode that opened while its detector warmed "
        "up shows that open too, marked warming up.</p>", more,
        _table("t-timeline", ["time", "kind", "what", "scope", "detail", "verified",
                              "acknowledged"], timeline[:MAX_TIMELINE]),
        "<h2>Plots</h2>", *plots(rep, t0, t1),
        *_score_tables(rep),
        "<h2>Commands by action and scope</h2>",
        _table("t-commands", ["action", "scope", "count"], rep["commands"]["by_action_scope"]),
        "<h2>Time in each mitigation state</h2>", _state_table(rep),
        "<h2>Command log</h2>",
        _table("t-log", ["time", "action", "scope", "params", "verified", "acknowledged",
                         "reason"],
               [[utc(c["t"]), c["action"], c["scope"], json.dumps(c["params"], sort_keys=True),
                 c["verified"], c["ack"], c["reason"]] for c in rep["command_log"]]),
        *_detector_table(rep),
        f'<p class="run-info">generated {esc(run["generated_at"])}; wall {run["wall_s"]} s: '
        f"start-up {run.get('startup_s', 0)} s, then {run.get('process_s', run['wall_s'])} s "
        f"processing ({esc(run['events_per_s'])} events/s); config sha256 "
        f"{esc(rep['config_hash'][:12])}</p>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(rep['title'])}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(x for x in sections if x) + "\n</body></html>\n")
