"""Backtests: determinism, file sink output, labels, CLI, and equality with a live run."""

from __future__ import annotations

import json
import tomllib
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from riskguard.connectors.topics import INPUT_STREAMS, TopicSpec, create_topics, topic_name
from riskguard.dataflows.backtest import (
    backtest_files,
    labels_to_json,
    parse_labels,
    run_backtest,
)
from riskguard.dataflows.demo import init_keys, stream_of
from riskguard.dataflows.guard import build_flow, load_guard_config, load_keys
from riskguard.dataflows.report import strip_run
from riskguard.dataflows.stress import (
    generate_market,
    guard_config_doc,
    load_scenario,
    scenario_labels,
    scenario_path,
)
from riskguard.operators.signing import decode_command
from riskguard.operators.signing.crypto import decode_envelope
from riskguard.schemas import decode, encode

from riskguard.errors import ConfigError
from riskguard.toml_text import dump_toml

NS = 1_000_000_000


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The cascading-failure scenario as a JSONL file, its labels, keys and a config."""
    work = tmp_path_factory.mktemp("bt")
    sc = load_scenario(scenario_path("cascading_failure"))
    keys = init_keys(work)
    cfg = work / "guard.toml"
    cfg.write_text(dump_toml(guard_config_doc(sc, keys)))
    recs = sorted(generate_market(sc), key=lambda r: r.ts)
    data = work / "cascade.jsonl"
    data.write_bytes(b"".join(encode(r) + b"\n" for r in recs))
    labels = work / "labels.json"
    labels.write_text(json.dumps(labels_to_json(scenario_labels(sc))))
    return {"work": work, "sc": sc, "keys": keys, "cfg": cfg, "recs": recs, "data": data,
            "labels": labels}


def test_two_backtests_give_byte_identical_reports_and_commands(cascade, tmp_path):
    """Same file, same config: commands.jsonl and report.json/html are identical
    byte for byte once the run section (wall-clock facts) is removed."""
    outs = []
    for name in ("a", "b"):
        backtest_files(cascade["cfg"], [cascade["data"]], labels=cascade["labels"],
                       out_dir=tmp_path / name)
        outs.append(tmp_path / name)
    a, b = outs
    assert (a / "commands.jsonl").read_bytes() == (b / "commands.jsonl").read_bytes()
    assert (a / "signals.jsonl").read_bytes() == (b / "signals.jsonl").read_bytes()
    for f in ("report.json", "report.html"):
        assert strip_run((a / f).read_text()) == strip_run((b / f).read_text())
    assert len((a / "commands.jsonl").read_bytes().splitlines()) >= 7


def test_backtest_report_counts_commands_and_labelled_episodes(cascade, tmp_path):
    """The report counts the cascade's commands by action and scope, finds both
    labelled incidents, and measures their detection delay."""
    rep = backtest_files(cascade["cfg"], [cascade["data"]], labels=cascade["labels"],
                         out_dir=tmp_path)
    pairs = {(a, s): n for a, s, n in rep["commands"]["by_action_scope"]}
    assert pairs[("halt_trading", "venue:okx")] == 1
    assert pairs[("halt_trading", "counterparty:binance")] == 1
    assert pairs[("reroute_order_flow", "venue:okx")] == 1
    assert rep["episodes"]["by_kind"]["venue_outage"]["recall"] == 1.0
    assert rep["episodes"]["by_kind"]["rerouted_flow_breach"]["recall"] == 1.0
    assert rep["detection_delay_s"]["n"] == 2
    assert 0 < rep["detection_delay_s"]["p95"] < 30
    assert rep["mitigation_states"]["by_scope"]["venue:okx"]["halt_trading"] > 0
    assert rep["summary"]["dead_letters"] == 0


def test_commands_file_holds_signed_envelopes_with_event_time_issued_at(cascade, tmp_path):
    """Every line of commands.jsonl is a signed envelope whose command's
    issued_at lies inside the data's event-time span (the event clock)."""
    res = run_backtest(*load_guard_config(cascade["cfg"]), records=cascade["recs"],
                       out_dir=tmp_path)
    lines = (tmp_path / "commands.jsonl").read_bytes().splitlines()
    cmds = [decode_command(decode_envelope(line)) for line in lines]
    assert [c.command_id for c in cmds] == [c.command_id for c in res.commands]
    assert all(res.start_ns <= c.issued_at <= res.end_ns for c in cmds)
    assert [c.seq for c in cmds] == list(range(1, len(cmds) + 1))
    serial = load_keys(load_guard_config(cascade["cfg"])[0])[1].serial
    assert serial > 0 and {c.trust_serial for c in cmds} == {serial}  # the file it ran on


def _commands_and_signals(cascade: dict, batch_size: int) -> tuple[list, list]:
    res = run_backtest(*load_guard_config(cascade["cfg"]), records=cascade["recs"],
                       batch_size=batch_size)
    cmds = sorted((c.command_id, c.action.value, c.scope.label(),
                   tuple(c.params.get("targets", []))) for c in res.commands)
    return cmds, sorted(s.id for s in res.signals)


@pytest.fixture(scope="module")
def batch20(cascade: dict) -> tuple[list, list]:
    """The cascade's commands and signal ids at batch size 20 (the reference)."""
    return _commands_and_signals(cascade, 20)


@pytest.mark.parametrize("batch_size", [1, 7, 250])
def test_backtest_commands_do_not_depend_on_how_the_input_is_batched(
        cascade, batch20, batch_size):
    """Keyed steps see each key's records in event-time order and exposures are re-valued
    on event-time ticks, so the commands (ids, actions, scopes, targets) and signal ids
    are the same whatever the input batch size."""
    assert _commands_and_signals(cascade, batch_size) == batch20


def test_labels_accept_iso_times_and_reject_bad_windows():
    """Labels take ns ints or ISO-8601; an end before its start names the key."""
    labs = parse_labels([{"kind": "k", "scope": "venue:a", "start": "2026-01-01T00:00:00Z",
                          "end": 1_767_225_660_000_000_000}])
    assert labs[0].start_ns == 1_767_225_600_000_000_000
    with pytest.raises(ConfigError, match=r"labels.incidents\[0\].end"):
        parse_labels({"incidents": [{"kind": "k", "scope": "s", "start": 10, "end": 5}]})


def test_labels_refuse_an_unknown_key_naming_it():
    """A misspelt key is refused, not ignored (a note is allowed)."""
    item = {"kind": "k", "scope": "s", "start": 0, "end": 1, "note": "for people"}
    assert parse_labels([item])[0].end_ns == 1
    with pytest.raises(ConfigError, match=r"labels.incidents\[0\].stat"):
        parse_labels([{**item, "stat": 0}])


def test_incident_tables_take_toml_times_and_name_their_own_keys(tmp_path):
    """An incidents TOML file may write its times as TOML date-times or dates (UTC
    without an offset); an error names the table's own key (onset, end), and an
    unknown key is refused by name."""
    import tomllib

    from riskguard.dataflows.backtest import incident_labels

    head = 'file = "x.csv"\nname = "crash"\nseries = "BTC"\nresolution = "1h"\n'
    doc = tomllib.loads(f"[[incident]]\n{head}onset = 2020-03-12T06:00:00Z\nend = 2020-03-13\n")
    labels, instruments = incident_labels(doc, ["data/x.csv"])
    assert (labels[0].start_ns, labels[0].end_ns) == (1_583_992_800 * 10**9,
                                                      1_584_057_600 * 10**9)
    assert instruments == {"data/x.csv": "BTC"}
    for body, key in ((f"{head}onset = 'soon'\nend = 0\n", "onset"),
                      (f"{head}onset = 5\nend = 4\n", "end"),
                      (f"{head}onset = 0\nend = 1\nonst = 0\n", "onst")):
        with pytest.raises(ConfigError, match=rf"labels.incident\[0\].{key}"):
            incident_labels(tomllib.loads(f"[[incident]]\n{body}"), ["x.csv"])


def test_cli_backtest_writes_report_files(cascade, tmp_path, capsys):
    """`riskguard backtest` prints the summary and writes the three outputs."""
    from riskguard.cli import main

    rc = main(["backtest", "--config", str(cascade["cfg"]), "--data", str(cascade["data"]),
               "--labels", str(cascade["labels"]), "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "halt_trading" in out and "recall 1.0" in out
    for f in ("report.json", "report.html", "commands.jsonl"):
        assert (tmp_path / f).is_file()


def test_cli_backtest_says_when_the_playbook_has_no_rules(cascade, tmp_path, capsys):
    """A config without a playbook reports signals and issues nothing: the summary says
    so, and where the bundled playbook is, rather than a bare "commands 0"."""
    from riskguard.cli import main

    doc = tomllib.loads(cascade["cfg"].read_text())
    doc.pop("playbook", None)
    bare = cascade["work"] / "no_rules.toml"
    bare.write_text(dump_toml(doc))
    assert main(["backtest", "--config", str(bare), "--data", str(cascade["data"]),
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "commands 0 " in out
    assert "note: the playbook has no rules, so no mitigation command will be issued" in out
    assert "playbook.toml" in out
    main(["backtest", "--config", str(cascade["cfg"]), "--data", str(cascade["data"]),
          "--out", str(tmp_path / "with")])
    assert "no rules" not in capsys.readouterr().out


@pytest.mark.kafka
def test_backtest_equals_live_run_through_the_broker(cascade, kafka_bootstrap, tmp_path):
    """The same events published to the guard's input topics and run through
    build_flow (Kafka source, event-time alignment, system clock) give the same
    commands as the file backtest: ids, actions, scopes and targets. issued_at
    and recv_ts differ (processing time) and are not compared. ``align_skew_s = 0``
    makes the live source merge its topics in strict event-time order, as the file is."""
    env = f"eq{uuid.uuid4().hex[:8]}"
    doc = guard_config_doc(cascade["sc"], cascade["keys"])
    doc["env"] = env
    doc["kafka"] = {"bootstrap": kafka_bootstrap}
    doc["input"] = {"idle_eof_s": 4.0, "batch_size": 20, "check_future": False,
                    "max_lateness_ns": 60 * NS, "stamp_recv_ts": False, "align_skew_s": 0.0}
    cfg_path = cascade["work"] / f"live-{env}.toml"
    cfg_path.write_text(dump_toml(doc))
    cfg, digest = load_guard_config(cfg_path)
    streams = [*INPUT_STREAMS, "commands", "dead_letters", "signals", "exposures", "audit"]
    create_topics({"bootstrap.servers": kafka_bootstrap},
                  [TopicSpec(topic_name(env, s), partitions=1) for s in streams])
    p = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
    for rec in cascade["recs"]:
        p.produce(topic_name(env, stream_of(rec)), encode(rec))
        p.poll(0)
    assert p.flush(30) == 0
    from bytewax.testing import run_main

    run_main(build_flow(cfg, digest))
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": env,
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic_name(env, "commands"), 0, 0)])
    live = []
    idle = 0
    while idle < 5:
        msgs = c.consume(100, 0.5)
        idle = 0 if msgs else idle + 1
        live.extend(decode_command(decode_envelope(m.value())) for m in msgs if not m.error())
    c.close()
    back = run_backtest(*load_guard_config(cascade["cfg"]), records=cascade["recs"],
                        batch_size=20)

    def key(cmd):
        return (cmd.command_id, cmd.action.value, cmd.scope.label(),
                tuple(cmd.params.get("targets", [])))

    assert sorted(map(key, live)) == sorted(map(key, back.commands))
    assert len(live) >= 7
    # the exposures topic is keyed: a counterparty's exposures, and one limit's
    # utilizations, each keep one partition in order
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"{env}-exp",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic_name(env, "exposures"), 0, 0)])
    keyed: list[tuple[bytes | None, Any]] = []
    idle = 0
    while idle < 5:
        msgs = c.consume(500, 0.5)
        idle = 0 if msgs else idle + 1
        keyed.extend((m.key(), decode("exposures", m.value())) for m in msgs if not m.error())
    c.close()
    kinds = {type(r).__name__ for _k, r in keyed}
    assert kinds == {"Exposure", "Utilization"}, kinds
    assert all(k == (r.counterparty if type(r).__name__ == "Exposure" else r.limit_path).encode()
               for k, r in keyed)


def test_a_record_the_guard_does_not_consume_is_a_dead_letter_not_dropped(cascade):
    """A valid wire record of a type no guard step consumes (here a feature vector on an
    input topic) goes to the dead letters with reason unexpected_type, and a bare
    (unsigned) command record with reason unsigned_command."""
    from riskguard.schemas import FeatureVector, MitigationCommand, Scope, ScopeKind
    from riskguard.schemas.commands import Action, Audience

    recs = cascade["recs"][:200]
    ts = recs[-1].ts
    stray = FeatureVector(key="okx/BTC-USDT", ts=ts, values={"x": 1.0},
                          scope=Scope(kind=ScopeKind.INSTRUMENT, value="BTC-USDT", venue="okx"))
    bare = MitigationCommand(command_id="bare-1", issuer="someone", issued_at=ts,
                             expires_at=ts + 60 * NS, audience=Audience(env="x", topic="y"),
                             action=Action.RESUME, scope=Scope(kind=ScopeKind.FIRM, value="*"),
                             reason="not signed")
    res = run_backtest(*load_guard_config(cascade["cfg"]), records=[*recs, stray, bare])
    reasons = sorted((d.reason, d.found) for d in res.dead_letters)
    assert ("unexpected_type", "FeatureVector") in reasons
    assert any(r == "unsigned_command" for r, _ in reasons)


def test_a_quote_whose_bid_plus_ask_overflows_does_not_stop_the_backtest(cascade):
    """bid = ask = 1e308 (valid fields) priced the key at infinity: the detect step
    crashed (a log of 0) and took the whole backtest down."""
    from riskguard.schemas import DeadLetter, Quote

    recs = cascade["recs"]
    first = next(r for r in recs if isinstance(r, Quote))
    bad = Quote(id="huge", venue=first.venue, instrument=first.instrument,
                ts=first.ts + 10 * NS, bid=1e308, bid_size=1.0, ask=1e308, ask_size=1.0)
    records = sorted([*recs, bad], key=lambda r: r.ts)
    res = run_backtest(*load_guard_config(cascade["cfg"]), records=records)
    assert res.n_events == len(records)
    assert any(s.key == f"{first.venue}/{first.instrument}" for s in res.signals)
    for sig in res.signals:
        assert not isinstance(decode("signals", encode(sig)), DeadLetter), sig
