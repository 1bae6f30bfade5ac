"""Calibration: time-ordered splits, no look-ahead, calibrated config, signed proposals."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from riskguard.dataflows.backtest import Label
from riskguard.dataflows.calibrate import (
    apply_overrides,
    calibrate,
    config_doc,
    propose,
    run_every,
)
from riskguard.dataflows.demo import init_keys
from riskguard.dataflows.guard import load_guard_config
from riskguard.dataflows.stress import (
    START_NS,
    MarketSpec,
    Scenario,
    Shock,
    generate_market,
    guard_config_doc,
)
from riskguard.operators.signing.crypto import PAYLOAD_LIMIT_UPDATE, decode_envelope
from riskguard.operators.signing.trust import RootSet, TrustStore
from riskguard.schemas import Audience, LimitUpdate, decode
from session_share import once_a_session

from riskguard.errors import ConfigError
from riskguard.toml_text import dump_toml

NS = 1_000_000_000
GRID = {"feeds.max_gap_s": [20.0, 3.0]}
ONE_CANDIDATE = {"feeds.max_gap_s": [20.0]}
"""A grid for tests whose claim is not about the search: one backtest fewer a round."""
#: Short heartbeat jitter (unlabelled) and one long labelled outage before the
#: split; medium outages (labelled) only after it.
JITTER = (200.0, 300.0)
TRAIN_OUTAGE = 400.0
FUTURE_OUTAGES = (650.0, 750.0, 850.0)


def _scenario(future: bool = True) -> Scenario:
    shocks = [Shock(kind="heartbeat_stop", venues=("okx",), onset_s=t, hold_s=6.0)
              for t in JITTER]
    shocks.append(Shock(kind="heartbeat_stop", venues=("okx",), onset_s=TRAIN_OUTAGE,
                        hold_s=40.0))
    if future:
        shocks += [Shock(kind="heartbeat_stop", venues=("okx",), onset_s=t, hold_s=7.0)
                   for t in FUTURE_OUTAGES]
    return Scenario(name="calib", duration_s=950, seed=3, shocks=tuple(shocks),
                    market=MarketSpec(venues=("binance", "okx"), instruments={
                        "BTC-USDT": msgspec.convert({"price": 65000.0}, type=_inst())}))


def _inst() -> type:
    from riskguard.dataflows.stress import InstrumentSpec

    return InstrumentSpec


def _labels(future: bool = True) -> list[Label]:
    def lab(t: float, hold: float) -> Label:
        return Label("outage", "venue:okx", START_NS + int(t * NS),
                     START_NS + int((t + hold) * NS))

    out = [lab(TRAIN_OUTAGE, 40.0)]
    if future:
        out += [lab(t, 7.0) for t in FUTURE_OUTAGES]
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    work = tmp_path_factory.mktemp("calib")
    keys = init_keys(work)
    cfg = work / "guard.toml"
    doc = guard_config_doc(_scenario(), keys)
    # Keep the learned detector out of this test: alarms come from the
    # heartbeat-gap threshold being calibrated only.
    doc["detector"] = {"warmup_events": 10**9, "warmup_ns": 10**15}
    cfg.write_text(dump_toml(doc))
    return cfg, generate_market(_scenario())


@pytest.fixture(scope="module")
def runs(setup, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The calibrations several tests read, each run once (grid :data:`GRID`, split at
    0.6): ``labelled`` with every label, its backtests' newest record times in call
    order as ``seen``; ``train_labelled`` with the training fold's label only. Once a
    session (:func:`session_share.once_a_session`), as JSON."""
    from riskguard.dataflows.backtest import run_backtest

    cfg, recs = setup

    def make(work: Path) -> dict:
        seen: list[int] = []

        def spy(*args, records, **kw):
            seen.append(max(r.ts for r in records))
            return run_backtest(*args, records=records, **kw)

        labelled = calibrate(cfg, recs, _labels(), work=work / "all", grid=GRID,
                             train_frac=0.6, runner=spy)
        train_labelled = calibrate(cfg, recs, _labels(future=False), work=work / "train",
                                   grid=GRID, train_frac=0.6)
        return {"labelled": labelled, "seen": seen, "train_labelled": train_labelled}

    return once_a_session(tmp_path_factory, "calibrate-runs", make)


def test_split_stops_future_labels_from_changing_the_choice(setup, runs, tmp_path):
    """The planted leak: future-fold outages favour the 3 s gap limit. A
    look-ahead search (scored over all data) would pick 3 s; the time-ordered
    split sees only the training fold (jitter false alarms, one long outage)
    and picks 20 s, whether or not the future labels exist."""
    cfg, recs = setup
    split, no_future = runs["labelled"], runs["train_labelled"]
    assert split["chosen"] == {"feeds.max_gap_s": 20.0}
    assert no_future["chosen"] == split["chosen"]
    assert [c["train"] for c in split["candidates"]] == \
        [c["train"] for c in no_future["candidates"]]
    # The leak would have helped: on the held-out fold the 3 s limit scores higher.
    look_ahead = calibrate(cfg, recs, _labels(), work=tmp_path / "c", grid=GRID,
                           train_frac=0.999)
    assert look_ahead["chosen"] in ({}, {"feeds.max_gap_s": 3.0})  # the config default is 3 s
    held = split["held_out"]
    assert held["chosen"]["recall"] == 0.0
    assert held["defaults"]["recall"] == 1.0


def test_search_never_receives_records_at_or_after_the_split(runs):
    """Every record the search runs on is before the split; only the two
    held-out runs (after the choice is made) see the whole data."""
    rep, seen = runs["labelled"], runs["seen"]
    n_search = 1 + 2  # defaults + the grid
    assert all(ts < rep["split_ns"] for ts in seen[:n_search])
    assert all(ts >= rep["split_ns"] for ts in seen[n_search:])
    assert rep["train_labels"] == 1 and rep["held_out_labels"] == 3


def test_future_data_changes_do_not_change_the_choice(setup, runs, tmp_path):
    """Changing only records after the split (no future outages at all) gives
    the same training scores and the same choice."""
    cfg, _recs = setup
    quiet = generate_market(_scenario(future=False))
    a = runs["train_labelled"]
    b = calibrate(cfg, quiet, _labels(False), work=tmp_path / "b", grid=GRID, train_frac=0.6)
    assert a["split_ns"] == b["split_ns"]
    assert a["chosen"] == b["chosen"]
    assert [c["train"] for c in a["candidates"]] == [c["train"] for c in b["candidates"]]


def test_calibrated_config_loads_and_carries_the_chosen_values(runs):
    """calibrated.toml is a valid guard config with the chosen heartbeat-gap limit."""
    rep = runs["labelled"]
    calibrated, _ = load_guard_config(rep["calibrated_config"])
    assert {v.max_gap_ns for v in calibrated.feeds.venues.values()} == {20 * NS}
    assert set(rep["held_out"]) == {"defaults", "chosen"}


def test_escalation_scale_multiplies_every_rung_time(setup):
    """playbook.escalation_scale scales after_s of each rung; dotted keys set values."""
    cfg, _ = setup
    doc = config_doc(cfg)
    out = apply_overrides(doc, {"playbook.escalation_scale": 0.5,
                                "detector.target_alarm_rate": 0.01})
    before = [r.get("after_s", 0.0) for rule in doc["playbook"]["rules"] for r in rule["ladder"]]
    after = [r["after_s"] for rule in out["playbook"]["rules"] for r in rule["ladder"]]
    assert after == [b * 0.5 for b in before]
    assert out["detector"]["target_alarm_rate"] == 0.01


def test_continuous_calibration_writes_signed_limit_updates_not_applied(setup, tmp_path):
    """Each scheduled round over the latest window writes LimitUpdate envelopes
    signed by the limit-admin key (verifiable with the trust file) and a
    proposal config; the guard config file itself is unchanged."""
    from riskguard.schemas import Balance, Fill  # noqa: F401

    cfg, recs = setup
    before = cfg.read_text()
    fills = [Fill(id=f"f{i}", venue="binance", counterparty="binance", instrument="BTC-USDT",
                  side="buy", qty=1.0, price=65000.0, ts=START_NS + (100 + i) * NS)
             for i in range(3)]
    data = tmp_path / "data.jsonl"
    from riskguard.schemas import encode

    allrecs = sorted([*recs, *fills], key=lambda r: r.ts)
    data.write_bytes(b"".join(encode(r) + b"\n" for r in allrecs))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"incidents": [
        {"kind": lab.kind, "scope": lab.scope, "start": lab.start_ns, "end": lab.end_ns}
        for lab in _labels()]}))
    now = START_NS + 1000 * NS
    sleeps: list[float] = []
    n = run_every(30.0, 2, lambda i: propose(
        cfg, [data], labels, out_dir=tmp_path / "out", admin_key=cfg.parent / "limit-admin.key",
        window_s=900.0, now_ns=now, iteration=i, grid=ONE_CANDIDATE, train_frac=0.6),
        sleep=sleeps.append)
    assert n == 2 and sleeps == [30.0]
    lines = (tmp_path / "out" / "limit_updates.jsonl").read_bytes().splitlines()
    assert len(lines) == 2  # one binance proposal per round
    trust = TrustStore.load(cfg.parent / "trust.toml", RootSet.load(cfg.parent / "roots.toml"))
    gcfg, _ = load_guard_config(cfg)
    env = decode_envelope(lines[0])
    msg = trust.verify(env, expected_payload_type=PAYLOAD_LIMIT_UPDATE,
                       audience=Audience(env=gcfg.env, topic=gcfg.topic("limit_updates")),
                       now_ns=now)
    upd = msg.message
    assert isinstance(upd, LimitUpdate)
    assert upd.limit_path == "counterparty.binance" and upd.issuer == "limit-admin"
    assert upd.limit == 2_500_000.0  # configured 5M, peak 195k x 1.5, moved at most 50 %
    assert cfg.read_text() == before
    assert (tmp_path / "out" / "proposal-1" / "calibrated.toml").is_file()
    assert decode("limit_updates", lines[0]) is not None


def test_calibrating_f1_on_data_with_no_labelled_incident_is_refused(setup, tmp_path):
    """No incident in the training fold: there is no F1 to choose by, and calibrate says
    so (naming the labels and the way out) instead of reporting one."""
    cfg, recs = setup
    with pytest.raises(ConfigError, match=r"calibrate.labels: .*F1 means nothing on data "
                                          r"with no incident") as ei:
        calibrate(cfg, recs, [], work=tmp_path / "none", grid=GRID)
    assert ei.value.found == 0


def test_a_held_out_fold_without_incidents_reports_no_f1(runs):
    """Labels only in the training fold: the held-out rows carry no F1 and say why."""
    rep = runs["train_labelled"]
    for name in ("defaults", "chosen"):
        assert rep["held_out"][name]["f1"] is None
        assert rep["held_out"][name]["note"] == "no labelled incident in the held-out fold"


# ---------------------------------------------------------------------------- real data


def test_calibrate_reads_the_real_incident_files_and_their_labels(tmp_path):
    """`riskguard calibrate` on a real incident file with the real-data labels (an
    incidents TOML): the labels name the file's series, the crash is the labelled
    incident of the training fold, and the held-out fold (no incident) reports no F1."""
    import sys
    from importlib import resources

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import tomllib

    import shared_data

    from riskguard.cli import main

    data = shared_data.incidents_dir()
    reason = shared_data.missing_reason(data)
    if reason:
        pytest.skip(reason)
    keys = init_keys(tmp_path)
    playbook = tomllib.loads(resources.files("riskguard.dataflows").joinpath(
        "playbook.toml").read_text())["playbook"]
    cfg = tmp_path / "guard.toml"
    cfg.write_text(dump_toml({"env": "calib", "playbook": playbook, "keys": {
        "issuer": "riskguard-guard", "signing_key": keys.signing_key.name,
        "trust_file": keys.trust_file.name, "roots_file": keys.roots_file.name}}))
    crash = data / "binance_cm_BTCUSD_PERP_1m_priceklines_2025-10-09_2025-10-10.csv"
    out = tmp_path / "out"
    rc = main(["calibrate", "--config", str(cfg), "--data", str(crash), "--labels",
               str(data / "labels.toml"), "--out", str(out), "--train-frac", "0.95",
               "--grid", json.dumps({"detector.target_alarm_rate": [0.001, 0.002]})])
    assert rc == 0
    rep = json.loads((out / "calibration.json").read_text())
    assert rep["train_labels"] == 1 and rep["records"] == 2880
    defaults = rep["candidates"][0]
    assert defaults["overrides"] == {}
    assert defaults["train"]["by_kind"]["2025-10_liquidation_crash"]["recall"] == 1.0
    assert rep["held_out"]["defaults"]["f1"] is None  # no incident after the split
    assert (out / "calibrated.toml").is_file()


def test_a_grid_can_search_over_product_levels(setup, tmp_path):
    """``detector.bands.products`` is a grid key like any other: each candidate runs, and
    the calibrated config carries the chosen list of products, loadable as written."""
    from riskguard.dataflows.backtest import run_backtest

    cfg, recs = setup
    off = [{"match": "*/BTC-USDT", "enabled": False}]
    ran: list[list] = []

    def spy(config, *args, **kw):
        ran.append(_set_values(config.detector.bands.products))
        return run_backtest(config, *args, **kw)

    rep = calibrate(cfg, recs, _labels(), work=tmp_path,
                    grid={"detector.bands.products": [[], off]}, train_frac=0.6, runner=spy)
    assert ran[:3] == [[], [], off]  # the defaults, then each candidate of the grid
    calibrated, _ = load_guard_config(rep["calibrated_config"])
    chosen = _set_values(calibrated.detector.bands.products)
    assert chosen == rep["chosen"].get("detector.bands.products", [])  # {}: the defaults


def _set_values(products) -> list[dict]:
    """Each product as the table a config would give: its values that are set."""
    return [{k: v for k, v in msgspec.to_builtins(p).items() if v is not None}
            for p in products]


def _reading(cls, venue: str, exposure: float, level: str, **kw):
    from riskguard.schemas import LimitLevel, Scope, ScopeKind

    return cls(limit_path=f"counterparty.{venue}", kind="gross_notional",
               scope=Scope(kind=ScopeKind.COUNTERPARTY, value=venue), ts=START_NS,
               exposure=exposure, base_limit=5e6, effective_limit=5e6,
               utilization=exposure / 5e6, level=LimitLevel(level), **kw)


def test_a_limit_breached_in_the_window_is_kept_not_loosened(setup):
    """binance's exposure broke its 5M limit in the window: peak x headroom (clamped to
    +50 %) would raise it to 7.5M, a limit the same data would still break. Its proposal
    keeps 5M, flagged for review; okx (never near it) is lowered, the clamp said."""
    from riskguard.dataflows.backtest import BacktestResult
    from riskguard.dataflows.calibrate import limit_proposals, propose_limits
    from riskguard.operators.signing.crypto import Signer
    from riskguard.schemas import LimitBreach, Severity, Utilization

    cfg, _ = setup
    gcfg, _ = load_guard_config(cfg)
    res = BacktestResult(
        utilizations=[_reading(Utilization, "binance", 5.4e6, "breach"),
                      _reading(Utilization, "okx", 1e5, "ok")],
        signals=[_reading(LimitBreach, "binance", 5.4e6, "breach", id="b1",
                          severity=Severity.CRITICAL)], end_ns=START_NS)
    props = {p["limit_path"]: p for p in limit_proposals(gcfg, res)}
    b, o = props["counterparty.binance"], props["counterparty.okx"]
    assert b["breached"] and b["proposed"] == 5e6
    assert "breached in the window: review" in b["reason"]
    assert not o["breached"] and o["clamped"] and o["proposed"] == 2.5e6
    assert "clamped to -50% of the configured limit" in o["reason"]
    # a breach signal alone (the peak below the base limit, an effective limit cut) keeps it
    cut = BacktestResult(utilizations=[_reading(Utilization, "binance", 3e6, "ok")],
                         signals=res.signals, end_ns=START_NS)
    assert limit_proposals(gcfg, cut)[0]["proposed"] == 5e6
    admin = Signer.from_file(cfg.parent / "limit-admin.key", issuer="limit-admin")
    envs = propose_limits(gcfg, res, admin=admin, now_ns=START_NS)
    limits = sorted(msgspec.json.decode(e.payload, type=LimitUpdate).limit for e in envs)
    assert limits == [2.5e6, 5e6]


def test_an_incident_straddling_the_split_is_no_false_alarm_of_the_held_out_fold():
    """A label that starts before the split and ends after it: an alarm on it after the
    split is claimed by it (neither true nor false there), and the label is not scored
    held out (it started in training); an unrelated alarm stays false."""
    from riskguard.dataflows.backtest import BacktestResult
    from riskguard.dataflows.calibrate import score
    from riskguard.schemas import AnomalySignal, Scope, ScopeKind, Severity

    def sig(ts: int, venue: str) -> AnomalySignal:
        return AnomalySignal(
            id=f"s{ts}{venue}", key=f"{venue}/BTC-USDT", ts=ts * NS, phase="open",
            scope=Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue=venue),
            episode_id=f"{venue}#{ts}", score=2.0, threshold=1.0, severity=Severity.WARN,
            warming_up=False, model="m", model_version="1")

    labels = [Label("flash_crash", "instrument:okx/BTC-USDT", 100 * NS, 200 * NS)]
    res = BacktestResult(signals=[sig(160, "okx"), sig(170, "binance")],
                         keys={"okx/BTC-USDT"}, start_ns=0, end_ns=300 * NS)
    held = score(res, labels, start_ns=150 * NS)
    assert held["labels"] == 0 and held["false_alarms"] == 1  # binance's only
    # within grace after its end, too; past it, the alarm is false again
    late = BacktestResult(signals=[sig(250, "okx"), sig(270, "okx")], keys={"okx/BTC-USDT"},
                          start_ns=0, end_ns=300 * NS)
    assert score(late, labels, start_ns=220 * NS, grace_ns=60 * NS)["false_alarms"] == 1


def _write_with_bad_rows(path: Path, recs: list, bad: int) -> None:
    from riskguard.schemas import encode

    rows = [encode(r) for r in recs]
    bad_row = rows[0].replace(b'"ts":', b'"ts":-', 1)  # a negative time: a dead letter
    path.write_bytes(b"".join(r + b"\n" for r in [*rows, *[bad_row] * bad]))


def test_calibration_counts_its_dead_letters_and_refuses_too_many(setup, tmp_path, capsys):
    """Refused rows are counted by reason in calibration.json and said on stderr; past
    10 % of the rows calibrate refuses (exit 2, one line) before any run."""
    from riskguard.dataflows.backtest import BacktestResult
    from riskguard.dataflows.calibrate import calibrate_files, read_records

    from riskguard.cli import main

    cfg, recs = setup
    few = tmp_path / "few.jsonl"
    _write_with_bad_rows(few, recs[:2000], 3)
    dead: Counter = Counter()
    assert len(read_records([few], dead_letters=dead)) == 2000
    assert dead == {"validation": 3}
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"incidents": []}))
    rep = calibrate_files(cfg, [few], labels, out_dir=tmp_path / "out", grid=GRID,
                          objective="recall", fa_budget=1.0,
                          runner=lambda *a, **k: BacktestResult())
    assert rep["dead_letters"] == {"count": 3, "rows": 2003, "by_reason": {"validation": 3}}
    assert json.loads((tmp_path / "out" / "calibration.json").read_text())["dead_letters"] \
        == rep["dead_letters"]
    many = tmp_path / "many.jsonl"
    _write_with_bad_rows(many, recs[:100], 20)
    rc = main(["calibrate", "--config", str(cfg), "--data", str(many), "--labels",
               str(labels), "--out", str(tmp_path / "o2"), "--objective", "recall",
               "--fa-budget", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "20 of 120 refused (validation 20)" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o2" / "calibrated.toml").exists()


def test_a_round_with_no_label_in_its_window_writes_to_a_fresh_out_directory(setup, tmp_path):
    """``--every`` on an --out that does not exist yet, and no label in the window (no
    calibration run to make the folder): the round still writes its files."""
    from riskguard.schemas import encode

    cfg, recs = setup
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"".join(encode(r) + b"\n" for r in recs[:400]))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"incidents": []}))
    out = tmp_path / "fresh" / "out"
    rep = propose(cfg, [data], labels, out_dir=out, admin_key=cfg.parent / "limit-admin.key",
                  window_s=10.0, now_ns=START_NS, grid=GRID)
    assert rep["note"] == "no labels in window; thresholds unchanged"
    assert (out / "limit_updates.jsonl").is_file()
    assert (out / "proposal-0" / "calibration.json").is_file()


def test_recall_without_a_false_alarm_budget_is_refused(setup, tmp_path, capsys):
    """Recall alone is won by alarming all the time: the recall objective needs a budget,
    on the command line (one line, exit 2) and in the library."""
    from riskguard.cli import main

    cfg, recs = setup
    with pytest.raises(ConfigError, match=r"calibrate\.fa_budget"):
        calibrate(cfg, recs, _labels(), work=tmp_path / "a", grid=GRID, objective="recall")
    with pytest.raises(ConfigError, match=r"calibrate\.fa_budget"):
        calibrate(cfg, recs, _labels(), work=tmp_path / "b", grid=GRID, objective="recall",
                  fa_budget=float("nan"))
    data = tmp_path / "d.jsonl"
    data.write_text("")
    rc = main(["calibrate", "--config", str(cfg), "--data", str(data), "--labels",
               str(data), "--out", str(tmp_path / "o"), "--objective", "recall"])
    err = capsys.readouterr().err
    assert rc == 2 and "--objective recall needs --fa-budget" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags", [["--every", "-1"], ["--every", "nan"], ["--window", "0"],
                                   ["--iterations", "0"]])
def test_a_bad_schedule_is_refused_before_any_round(setup, tmp_path, capsys, flags):
    from riskguard.cli import main

    cfg, _ = setup
    args = {"--every": "1", "--window": "10", "--iterations": "1"}
    args[flags[0]] = flags[1]
    with pytest.raises(SystemExit) as stop:  # argparse's own exit, after its one line
        main(["calibrate", "--config", str(cfg), "--data", str(tmp_path / "none.jsonl"),
              "--out", str(tmp_path / "o"), "--admin-key", "k",
              *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flags[0]}: must be" in err


def test_an_empty_training_fold_is_refused_and_writes_nothing(setup, tmp_path):
    """Data of one moment: the training fold holds no record, so no candidate can be
    judged; calibrate refuses instead of writing the defaults as a calibrated config."""
    cfg, recs = setup
    one = [r for r in recs if r.ts == recs[0].ts]
    with pytest.raises(ConfigError, match=r"calibrate\.data: records before the split"):
        calibrate(cfg, one, _labels(), work=tmp_path / "w", grid=GRID, objective="recall",
                  fa_budget=1.0)
    assert not (tmp_path / "w" / "calibrated.toml").exists()
