"""Calibrate detector and playbook thresholds on labelled history, without look-ahead.

The first ``train_frac`` of the data's time span is the training fold, the rest held
out. Each candidate config (a grid over dotted config keys) runs through
:func:`riskguard.dataflows.backtest.run_backtest` on the training records only and is
scored on the training labels only (clipped to the split); the best candidate and the
defaults are then scored on the held-out fold. The search never receives records or
labels at or after the split.

Objective: episode-level F1 over all incident kinds, or (``objective = "recall"``)
recall subject to ``fa_budget`` false alarms per instrument-day. Ties go to fewer
commands outside labelled windows, then to the earlier candidate (defaults first).

Grid keys are dotted config paths plus three conveniences: ``feeds.max_gap_s`` (every
venue's heartbeat-gap limit, seconds), ``playbook.escalation_scale`` (multiplies every
rung's ``after_s``) and ``detector.bands.band_scale`` (multiplies every ``band_k``).
:func:`propose` reruns this over the latest window and writes proposals (a config file
and signed ``LimitUpdate`` envelopes); it never changes a running flow. See
docs/backtests.md.

>>> expand_grid({"a.b": [1, 2], "c": [3]})
[{'a.b': 1, 'c': 3}, {'a.b': 2, 'c': 3}]
"""

from __future__ import annotations

import itertools
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from riskguard.connectors.replay import ReplayFile, ReplaySource, read_all
from riskguard.dataflows.backtest import (
    BacktestResult,
    Label,
    read_labels,
    run_backtest,
)
from riskguard.dataflows.guard import GuardConfig, load_guard_config, load_keys
from riskguard.dataflows.report import alarms_of, episode_metrics, scope_related
from riskguard.operators.detection.band_levels import MoveBandConfig
from riskguard.operators.signing.crypto import PAYLOAD_LIMIT_UPDATE, Signer, sign_envelope
from riskguard.schemas import (
    Action,
    Audience,
    DeadLetter,
    LimitBreach,
    LimitLevel,
    LimitUpdate,
    SignedEnvelope,
    encode,
)
from riskguard.schemas.market import Measure

from riskguard.config import check_key_path, inline_playbook_file, read_toml
from riskguard.errors import ConfigError
from riskguard.toml_text import dump_toml

NS = 1_000_000_000
DAY_NS = 86_400 * NS
DEFAULT_GRID: dict[str, list[Any]] = {
    # the learned detector's alarm rate
    "detector.target_alarm_rate": [0.0005, 0.001, 0.005],
    # the move bands, which make most alarms on real market data: how wide a
    # volatility-scaled band is (the rules that make an alarm critical move no alarm count)
    "detector.bands.band_scale": [1.0, 1.4, 2.0],
    "playbook.escalation_scale": [1.0, 0.5],
}
_LIMIT_NS = uuid.UUID("0c4bd7f6-7f0a-4d55-b8d3-5f2b3f1e9a21")


CONVENIENCES = ("feeds.max_gap_s", "playbook.escalation_scale", "detector.bands.band_scale")
"""Grid keys that are no config path: each sets several settings (see the module doc)."""


def check_grid(grid: Any) -> dict[str, list[Any]]:
    """The grid, once every key names a setting of the guard config and every value is
    a non-empty list; else ConfigError naming the key, e.g. ``detector.warmup_event: is
    not a known setting (did you mean `detector.warmup_events`?)``.

    >>> check_grid({"detector.warmup_events": [60, 300]})
    {'detector.warmup_events': [60, 300]}
    >>> check_grid({"detector.warmup_event": [60, 300]})
    Traceback (most recent call last):
    ...
    riskguard.errors.ConfigError: detector.warmup_event: is not a known setting
    (did you mean `detector.warmup_events`?); got [60, 300]
    """
    if not isinstance(grid, dict):
        raise ConfigError("calibrate.grid", 'a JSON object of dotted config keys to lists of '
                          'values ({"detector.target_alarm_rate": [0.0005, 0.001]})', grid)
    for key, values in grid.items():
        check_key_path(GuardConfig, key, extra=CONVENIENCES, found=values)
        if not isinstance(values, list) or not values:
            raise ConfigError(key, "a non-empty list of values to try", values)
        if key in CONVENIENCES:
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                    raise ConfigError(key, "positive numbers", v)
    return grid


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of the grid, in key order."""
    keys = list(grid)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*grid.values())]


def config_doc(path: str | Path) -> dict[str, Any]:
    """The config file as a dict, with ``playbook_file`` inlined and key paths absolute."""
    p = Path(path).resolve()
    data = inline_playbook_file(read_toml(p), p.parent)
    data.pop("playbook_file", None)
    keys = dict(data.get("keys", {}))
    for k in ("signing_key", "trust_file", "roots_file"):
        if k in keys:
            keys[k] = str((p.parent / keys[k]).resolve())
    data["keys"] = keys
    return data


def apply_overrides(doc: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Apply dotted-key overrides (and the conveniences) to a config doc.

    >>> doc = apply_overrides({}, {"detector.bands.band_scale": 2.0})
    >>> doc["detector"]["bands"]["band_k"]
    [14.0, 12.0, 11.0, 10.0, 8.0, 6.0]
    """
    out = json.loads(json.dumps(doc))
    for key, value in over.items():
        if key == "feeds.max_gap_s":
            venues = out.setdefault("feeds", {}).setdefault("venues", {})
            for vf in venues.values():
                vf["max_gap_ns"] = int(value * NS)
            continue
        if key == "detector.bands.band_scale":
            bands = out.setdefault("detector", {}).setdefault("bands", {})
            # a volatility index's own default widths, at these horizons, scale too
            vol_k = msgspec.convert(bands, MoveBandConfig).for_key(
                "", Measure.VOLATILITY).band_k
            bands["band_k"] = [k * value for k in bands.get("band_k", MoveBandConfig().band_k)]
            vol = bands.setdefault("volatility", {})
            if vol.get("band_k") is None:
                vol["band_k"] = list(vol_k)
            for levels in [vol, *bands.get("products", [])]:
                if isinstance(levels, dict) and levels.get("band_k") is not None:
                    levels["band_k"] = [k * value for k in levels["band_k"]]
            continue
        if key == "playbook.escalation_scale":
            for rule in out.get("playbook", {}).get("rules", []):
                rule["ladder"] = [{**r, "after_s": float(r.get("after_s", 0.0)) * value}
                                  for r in rule["ladder"]]
            continue
        parts = key.split(".")
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                where = f"calibrate.grid.{key}"
                raise ConfigError(where, "a path to a config table", p)
        cur[parts[-1]] = value
    return out


def _load(doc: dict[str, Any], work: Path, name: str) -> tuple[GuardConfig, str]:
    path = work / f"{name}.toml"
    path.write_text(dump_toml(doc))
    return load_guard_config(path)


def _false_mitigations(res: BacktestResult, labels: Sequence[Label], grace_ns: int) -> int:
    n = 0
    for c in res.commands:
        if c.action in (Action.ALERT, Action.RESUME):
            continue
        if not any(lab.start_ns <= c.issued_at <= lab.end_ns + grace_ns
                   and scope_related(lab.scope, c.scope) for lab in labels):
            n += 1
    return n


def score(res: BacktestResult, labels: Sequence[Label], *, start_ns: int | None = None,
          end_ns: int | None = None, objective: str = "f1", fa_budget: float | None = None,
          grace_ns: int = 60 * NS) -> dict[str, Any]:
    """Metrics of one run within ``[start_ns, end_ns)`` and its objective value."""
    ep = episode_metrics(alarms_of(res.signals), labels, grace_ns=grace_ns, start_ns=start_ns,
                         end_ns=end_ns)
    lo = res.start_ns if start_ns is None else start_ns
    hi = res.end_ns if end_ns is None else end_ns
    inst_days = max(len(res.keys), 1) * max(hi - lo, NS) / DAY_NS
    fa_rate = ep["false_alarms"] / inst_days
    a = ep["all"]
    if objective == "recall":
        value = (a["recall"] or 0.0) if fa_budget is None or fa_rate <= fa_budget else -fa_rate
    else:
        value = a["f1"] or 0.0
    # an incident that straddles the fold's edge covers its commands inside the fold
    window = [lab for lab in labels if lab.start_ns < hi and lab.end_ns + grace_ns >= lo]
    cmds = [c for c in res.commands if lo <= c.issued_at < hi]
    fm = _false_mitigations(BacktestResult(commands=cmds), window, grace_ns)
    return {"objective": round(value, 6), "precision": a["precision"], "recall": a["recall"],
            "f1": a["f1"], "labels": a["labels"], "detected": a["detected"],
            "false_alarms": ep["false_alarms"],
            "false_alarms_per_instrument_day": round(fa_rate, 4),
            "false_mitigations": fm, "detection_delay_s": a["detection_delay_s"],
            "by_kind": {k: {"f1": v["f1"], "recall": v["recall"], "precision": v["precision"]}
                        for k, v in ep["by_kind"].items()}}


Runner = Callable[..., BacktestResult]


def calibrate(
    config: str | Path,
    records: Sequence[Any],
    labels: Sequence[Label],
    *,
    work: str | Path,
    grid: dict[str, list[Any]] | None = None,
    train_frac: float = 0.7,
    objective: str = "f1",
    fa_budget: float | None = None,
    runner: Runner = run_backtest,
    batch_size: int = 20,
) -> dict[str, Any]:
    """Choose config values on the training fold; report held-out metrics.

    Returns the calibration report (``chosen``, ``candidates``, ``held_out``
    for chosen and defaults, ``split_ns``) and writes ``calibrated.toml`` to
    ``work``. ``batch_size`` is the input batch of each run: smaller batches
    keep heartbeats and event-time ticks closer to event order (see the report).
    """
    _check_search(train_frac, objective, fa_budget)
    grid = check_grid(DEFAULT_GRID if grid is None else grid)
    (w := Path(work)).mkdir(parents=True, exist_ok=True)
    recs = sorted(records, key=lambda r: r.ts)
    split, train, train_labels = _training_fold(recs, labels, train_frac, objective)
    base = config_doc(config)
    signer, trust = load_keys(_load(base, w, "defaults")[0])
    cands = [{}, *expand_grid(grid)]
    # every candidate decodes before any runs: a bad value stops the search at once
    loaded = [_load(apply_overrides(base, over), w, f"candidate-{i}")
              for i, over in enumerate(cands)]
    rows = [{"overrides": over, "train": score(
        runner(cfg, digest, records=train, signer=signer, trust=trust, batch_size=batch_size),
        train_labels, end_ns=split, objective=objective, fa_budget=fa_budget)}
        for over, (cfg, digest) in zip(cands, loaded, strict=True)]
    # the best objective, then the fewest false mitigations, then the earliest candidate
    best = max(range(len(rows)), key=lambda i: (
        rows[i]["train"]["objective"], -rows[i]["train"]["false_mitigations"], -i))
    chosen = cands[best]
    held = {name: _held_out(apply_overrides(base, over), w, name, recs, labels, split,
                            runner=runner, keys=(signer, trust), batch_size=batch_size,
                            objective=objective, fa_budget=fa_budget)
            for name, over in (("defaults", {}), ("chosen", chosen))}
    (w / "calibrated.toml").write_text(
        "# written by riskguard calibrate (time-ordered split; see calibration.json)\n"
        + dump_toml(apply_overrides(base, chosen)))
    return {"split_ns": split, "train_frac": train_frac, "objective": objective,
            "fa_budget": fa_budget, "train_records": len(train), "records": len(recs),
            "train_labels": len(train_labels), "held_out_labels": sum(
                1 for lab in labels if lab.start_ns >= split),
            "chosen": chosen, "chosen_index": best, "candidates": rows, "held_out": held,
            "calibrated_config": str(w / "calibrated.toml")}


def _check_search(train_frac: float, objective: str, fa_budget: float | None) -> None:
    if not 0 < train_frac < 1:
        raise ConfigError("calibrate.train_frac", "a fraction in (0, 1)", train_frac)
    if objective not in ("f1", "recall"):
        raise ConfigError("calibrate.objective", "f1 or recall", objective)
    if objective == "recall" and fa_budget is None:
        # recall alone is won by alarming all the time
        raise ConfigError("calibrate.fa_budget", "a false-alarm budget with --objective "
                          "recall (--fa-budget N: false alarms per instrument-day)", None)
    if fa_budget is not None and not (math.isfinite(fa_budget) and fa_budget >= 0):
        raise ConfigError("calibrate.fa_budget", "false alarms per instrument-day, a finite "
                          "number 0 or more", fa_budget)


def _training_fold(recs: list[Any], labels: Sequence[Label], train_frac: float,
                   objective: str) -> tuple[int, list[Any], list[Label]]:
    """The split time, and the training fold: records strictly before it; labels that
    start before it, clipped to it. Nothing later is passed to the search."""
    if not recs:
        raise ConfigError("calibrate.data", "at least one record", 0)
    t0, t1 = recs[0].ts, recs[-1].ts
    split = t0 + int((t1 - t0) * train_frac)
    train = [r for r in recs if r.ts < split]
    if not train:  # one moment of data: nothing to search on, a choice of nothing
        raise ConfigError("calibrate.data", "records before the split (the training fold "
                          f"is the first {train_frac:.0%} of the data's time span)",
                          f"none: {len(recs):,} record(s) spanning {(t1 - t0) / NS:g} s")
    train_labels = [Label(lab.kind, lab.scope, lab.start_ns, min(lab.end_ns, split - 1))
                    for lab in labels if lab.start_ns < split]
    if objective == "f1" and not train_labels:
        inside = sum(1 for lab in labels if t0 <= lab.start_ns <= t1)
        raise ConfigError(
            "calibrate.labels",
            "a labelled incident in the training fold: F1 means nothing on data with no "
            f"incident ({inside} of {len(labels)} labels start inside the data, none before "
            f"the split at {train_frac:.0%} of its span); add labels or calibrate with "
            "--objective recall and a false-alarm budget", len(train_labels))
    return split, train, train_labels


def _held_out(doc: dict[str, Any], work: Path, name: str, recs: list[Any],
              labels: Sequence[Label], split: int, *, runner: Runner,
              keys: tuple[Any, Any], batch_size: int, objective: str,
              fa_budget: float | None) -> dict[str, Any]:
    """The scores of config ``doc`` on the held-out fold (every record, scored from
    ``split``)."""
    cfg, digest = _load(doc, work, f"heldout-{name}")
    res = runner(cfg, digest, records=recs, signer=keys[0], trust=keys[1],
                 batch_size=batch_size)
    held = score(res, labels, start_ns=split, objective=objective, fa_budget=fa_budget)
    if not any(lab.start_ns >= split for lab in labels):
        # no incident held out: an F1 there would be a number about nothing
        held = {**held, "f1": None, "objective": None,
                "note": "no labelled incident in the held-out fold"}
    return held


MAX_DEAD_SHARE = 0.1
"""The largest share of a calibration's rows that may be dead letters: past it the
thresholds would be fitted to a different market than the data's, and calibrate refuses."""


def read_records(data: Sequence[str | Path], venue: str = "file",
                 instrument: str = "unknown",
                 instruments: dict[str, str] | None = None,
                 dead_letters: Counter[str] | None = None, **read: Any) -> list[Any]:
    """Every good record of the files, in event time; dead letters are dropped and
    counted by reason in ``dead_letters``. ``instruments`` names a file's instrument
    where its format does not; ``read`` holds the other
    :class:`~riskguard.connectors.replay.ReplayFile` settings (``format``, ``market``,
    ``contract_size``, ``measure``)."""
    named = instruments or {}
    src = ReplaySource([ReplayFile(p, venue=venue, instrument=named.get(str(p), instrument),
                                   **read) for p in data])
    dead = dead_letters if dead_letters is not None else Counter()
    out = []
    for r in read_all(src):
        if type(r) is DeadLetter:
            dead[r.reason] += 1
        else:
            out.append(r)
    return out


def dead_letter_summary(records: int, dead: Counter[str],
                        max_share: float = MAX_DEAD_SHARE) -> dict[str, Any]:
    """The refused rows of a calibration's input (``count``, ``by_reason``, ``rows``);
    a ConfigError when no record was accepted or more than ``max_share`` were refused.

    >>> dead_letter_summary(95, Counter(validation=5))
    {'count': 5, 'rows': 100, 'by_reason': {'validation': 5}}
    """
    n = sum(dead.values())
    rows = records + n
    by_reason = dict(sorted(dead.items()))
    if n and (not records or n > max_share * rows):
        reasons = ", ".join(f"{k} {v:,}" for k, v in by_reason.items())
        raise ConfigError("calibrate.data", f"at most {max_share:.0%} of rows refused "
                          "(dead letters), so that the thresholds fit the data",
                          f"{n:,} of {rows:,} refused ({reasons})")
    return {"count": n, "rows": rows, "by_reason": by_reason}


def labelled_data(data: Sequence[str | Path], labels: str | Path | None,
                  dead_letters: Counter[str] | None = None, **read: Any,
                  ) -> tuple[list[Any], list[Label]]:
    """The records of ``data`` and their labels
    (:func:`~riskguard.dataflows.backtest.read_labels`); ``read``: how to read the files
    (:func:`read_records`, which counts the refused rows in ``dead_letters``)."""
    labs, instruments = read_labels(labels, data)
    recs = read_records(data, instruments=instruments, dead_letters=dead_letters, **read)
    return recs, labs


def calibrate_files(config: str | Path, data: Sequence[str | Path], labels: str | Path, *,
                    out_dir: str | Path, read: dict[str, Any] | None = None,
                    **kw: Any) -> dict[str, Any]:
    """``riskguard calibrate`` (one shot): writes calibrated.toml and calibration.json."""
    dead: Counter[str] = Counter()
    records, labs = labelled_data(data, labels, dead_letters=dead, **(read or {}))
    refused = dead_letter_summary(len(records), dead)
    rep = {**calibrate(config, records, labs, work=out_dir, **kw), "dead_letters": refused}
    Path(out_dir, "calibration.json").write_text(json.dumps(rep, indent=1, sort_keys=True) + "\n")
    return rep


# -- continuous calibration -------------------------------------------------------------


def limit_proposals(cfg: GuardConfig, res: BacktestResult, *, headroom: float = 1.5,
                    max_change: float = 0.5, min_change: float = 0.1) -> list[dict[str, Any]]:
    """The counterparty gross-notional limits worth changing, one dict each (``limit_path``,
    ``configured``, ``peak``, ``proposed``, ``breached``, ``clamped``, ``reason``).

    A limit breached in the window (its peak exposure at or past the limit, or a breach
    signal on it) is never loosened: its proposal keeps it, flagged for review (a limit
    fitted to data that broke it would still break on that data). Any other is ``peak x
    headroom``, moved at most ``max_change`` (a fraction) from the configured limit, and
    proposed only when it differs by more than ``min_change``.
    """
    peak: dict[str, float] = {}
    for u in res.utilizations:
        if u.kind == "gross_notional" and u.limit_path.startswith("counterparty."):
            peak[u.limit_path] = max(peak.get(u.limit_path, 0.0), abs(u.exposure))
    breached = {s.limit_path for s in res.signals
                if isinstance(s, LimitBreach) and s.kind == "gross_notional"
                and s.level in (LimitLevel.BREACH, LimitLevel.HARD)}
    out: list[dict[str, Any]] = []
    for cp, cl in sorted(cfg.limits.counterparties.items()):
        spec = cl.limits.get("gross_notional")
        path = f"counterparty.{cp}"
        if spec is None or path not in peak:
            continue
        top, limit = peak[path], spec.limit
        seen = f"peak gross notional {top:,.0f} over the window"
        if path in breached or top >= limit:
            out.append({"limit_path": path, "configured": limit, "peak": top,
                        "proposed": limit, "breached": True, "clamped": False,
                        "reason": f"riskguard calibrate: {seen}, past the configured "
                                  f"{limit:,.0f}: kept at {limit:,.0f}; breached in the "
                                  "window: review"})
            continue
        want = top * headroom
        lo, hi = limit * (1 - max_change), limit * (1 + max_change)
        new = round(min(max(want, lo), hi), 2)
        if abs(new - limit) <= min_change * limit:
            continue
        clamp = ("" if lo <= want <= hi else
                 f", clamped to {'+' if want > hi else '-'}{max_change:.0%} of the configured "
                 "limit")
        out.append({"limit_path": path, "configured": limit, "peak": top, "proposed": new,
                    "breached": False, "clamped": bool(clamp),
                    "reason": f"riskguard calibrate: {seen} x headroom {headroom:g} = "
                              f"{want:,.0f}{clamp} -> {new:,.0f} (configured {limit:,.0f}); "
                              "proposal, apply after review"})
    return out


def propose_limits(cfg: GuardConfig, res: BacktestResult, *, admin: Signer, now_ns: int,
                   headroom: float = 1.5, max_change: float = 0.5, min_change: float = 0.1,
                   ttl_s: float = 3600.0) -> list[SignedEnvelope]:
    """The :func:`limit_proposals` as signed ``LimitUpdate`` envelopes; ids derive from
    the inputs (uuid5)."""
    audience = Audience(env=cfg.env, topic=cfg.topic("limit_updates"))
    out = []
    for p in limit_proposals(cfg, res, headroom=headroom, max_change=max_change,
                             min_change=min_change):
        path, new = p["limit_path"], p["proposed"]
        upd = LimitUpdate(
            update_id=str(uuid.uuid5(_LIMIT_NS, f"{path}|{new}|{res.end_ns}")),
            issuer=admin.issuer, issued_at=now_ns, expires_at=now_ns + int(ttl_s * NS),
            audience=audience, limit_path=path, kind="gross_notional", limit=new,
            reason=p["reason"])
        out.append(sign_envelope(PAYLOAD_LIMIT_UPDATE, encode(upd), [admin]))
    return out


def propose(config: str | Path, data: Sequence[str | Path], labels: str | Path | None, *,
            out_dir: str | Path, admin_key: str | Path, window_s: float,
            now_ns: int, iteration: int = 0, read: dict[str, Any] | None = None,
            **kw: Any) -> dict[str, Any]:
    """One continuous-calibration round over the latest ``window_s`` of the data.

    Writes ``proposal-<n>/calibrated.toml`` (threshold changes) and appends the
    signed limit updates to ``limit_updates.jsonl``. Nothing is applied.
    """
    from riskguard.operators.signing.crypto import encode_envelope  # noqa: PLC0415

    dead: Counter[str] = Counter()
    recs, all_labels = labelled_data(data, labels, dead_letters=dead, **(read or {}))
    refused = dead_letter_summary(len(recs), dead)
    if not recs:
        raise ConfigError("calibrate.data", "at least one record", 0)
    end = max(r.ts for r in recs)
    window = [r for r in recs if r.ts >= end - int(window_s * NS)]
    labs = [lab for lab in all_labels if lab.start_ns >= end - int(window_s * NS)]
    d = Path(out_dir) / f"proposal-{iteration}"
    rep = (calibrate(config, window, labs, work=d, **kw) if labs else
           {"chosen": {}, "note": "no labels in window; thresholds unchanged"})
    cfg, digest = load_guard_config(config)
    res = run_backtest(cfg, digest, records=window)
    admin = Signer.from_file(admin_key, issuer="limit-admin")
    envs = propose_limits(cfg, res, admin=admin, now_ns=now_ns)
    Path(out_dir).mkdir(parents=True, exist_ok=True)  # a fresh --out, no label in window
    out = Path(out_dir) / "limit_updates.jsonl"
    with out.open("ab") as fh:
        for env in envs:
            fh.write(encode_envelope(env) + b"\n")
    rep = {**rep, "window_start_ns": end - int(window_s * NS), "window_end_ns": end,
           "limit_updates": len(envs), "limit_updates_file": str(out),
           "limit_proposals": limit_proposals(cfg, res), "dead_letters": refused}
    d.mkdir(parents=True, exist_ok=True)
    (d / "calibration.json").write_text(json.dumps(rep, indent=1, sort_keys=True) + "\n")
    return rep


def run_every(every_s: float, iterations: int | None, fn: Callable[[int], Any],
              sleep: Callable[[float], None] = time.sleep) -> int:
    """Call ``fn(i)`` every ``every_s`` seconds, ``iterations`` times (None: forever)."""
    i = 0
    while iterations is None or i < iterations:
        fn(i)
        i += 1
        if iterations is None or i < iterations:
            sleep(every_s)
    return i


__all__ = [
    "CONVENIENCES", "DEFAULT_GRID", "apply_overrides", "calibrate", "calibrate_files",
    "check_grid", "config_doc", "dead_letter_summary",
    "expand_grid", "limit_proposals", "propose", "propose_limits", "read_records", "run_every",
    "score",
]
