"""`riskguard publish`: a user's files checked against the wire contract and produced to the
guard's input topics on the real dev broker; rejects counted by reason and kept as dead
letters; exit 0 / 1 / 2."""

from __future__ import annotations

import uuid

import pytest
from kafka_helpers import consume_all
from riskguard.connectors.broker import DevBroker
from riskguard.connectors.publish import Publisher, route
from riskguard.connectors.settings import KafkaSettings
from riskguard.connectors.topics import TopicSpec, create_topics, topic_name
from riskguard.schemas import Bar, DeadLetter, Fill, Quote, Side, Trade, VenueStatus, decode, encode

from riskguard.cli import main
from riskguard.errors import DeliveryError

NS = 1_000_000_000
T0 = 1_767_225_600 * NS


def _quote(i: int) -> Quote:
    return Quote(id=f"q{i}", venue="okx", instrument="BTC-USDT", ts=T0 + i * NS, bid=100.0,
                 ask=101.0, bid_size=1.0, ask_size=1.0)


def _fill() -> Fill:
    return Fill(id="f1", venue="okx", counterparty="okx", instrument="BTC-USDT",
                side=Side.BUY, qty=1.0, price=100.0, ts=T0 + 2 * NS)


def _status() -> VenueStatus:
    return VenueStatus(id="hb1", venue="okx", ts=T0 + 3 * NS, seq=1)


def _topics(bootstrap: str, env: str, *streams: str) -> None:
    create_topics({"bootstrap.servers": bootstrap},
                  [TopicSpec(topic_name(env, s)) for s in streams])


def test_auto_routes_each_type_to_its_input_stream_and_refuses_the_others():
    trade = Trade(id="t", venue="okx", instrument="BTC-USDT", ts=1, price=1.0, qty=1.0,
                  side=Side.BUY)
    assert [route(r, "auto") for r in (trade, _fill(), _status())] == [
        "market", "fills", "venue_status"]
    dl = route(_fill(), "market")
    assert isinstance(dl, DeadLetter)
    assert (dl.reason, dl.found, dl.step) == ("wrong_topic", "fill", "publish")
    assert "trade" in dl.expected and "market topic" in dl.expected
    assert decode("x", dl.raw) == _fill()  # the refused record is kept whole


@pytest.mark.kafka
def test_publish_auto_produces_good_records_keyed_and_reports_rejects(
        kafka_bootstrap, tmp_path, capsys):
    """Good records reach their topic (key venue/instrument, the exact wire bytes); a row
    that does not decode is a reject by reason, written to --rejects; exit 1."""
    env = f"p{uuid.uuid4().hex[:8]}"
    _topics(kafka_bootstrap, env, "market", "fills", "venue_status")
    good = [_quote(0), _quote(1), _fill(), _status()]
    data = tmp_path / "mine.jsonl"
    data.write_bytes(b"".join(encode(r) + b"\n" for r in good[:2])
                     + b'{"type":"quote","id":"bad","venue":"okx"}\n'
                     + b"not json\n"
                     + b"".join(encode(r) + b"\n" for r in good[2:]))
    rejects = tmp_path / "rejects.jsonl"
    rc = main(["publish", str(data), "--topic", "auto", "--brokers", kafka_bootstrap,
               "--env", env, "--rejects", str(rejects)])
    out = capsys.readouterr()
    assert rc == 1, out
    assert out.out.splitlines()[0] == "read 6  produced 4  rejected 2"
    assert "rejected validation" in out.out and "rejected malformed" in out.out
    assert out.err == ""  # no progress line: stderr is not a terminal
    dead = [decode("rejects", line) for line in rejects.read_bytes().splitlines()]
    assert sorted(d.reason for d in dead) == ["malformed", "validation"]
    assert all(isinstance(d, DeadLetter) for d in dead)

    market = consume_all(kafka_bootstrap, topic_name(env, "market"), expect=2)
    assert sorted(v for _p, _o, v in market) == sorted(encode(r) for r in good[:2])
    fills = consume_all(kafka_bootstrap, topic_name(env, "fills"), expect=1)
    assert [v for _p, _o, v in fills] == [encode(_fill())]
    status = consume_all(kafka_bootstrap, topic_name(env, "venue_status"), expect=1)
    assert [decode("s", v) for _p, _o, v in status] == [_status()]


@pytest.mark.kafka
def test_publish_to_one_topic_refuses_records_it_does_not_carry(kafka_bootstrap, tmp_path,
                                                                 capsys):
    """--topic market: a fill in the file is a wrong_topic reject, never produced."""
    env = f"p{uuid.uuid4().hex[:8]}"
    _topics(kafka_bootstrap, env, "market", "fills")
    data = tmp_path / "mixed.jsonl"
    data.write_bytes(encode(_quote(0)) + b"\n" + encode(_fill()) + b"\n")
    rc = main(["publish", str(data), "--topic", "market", "--brokers", kafka_bootstrap,
               "--env", env])
    out = capsys.readouterr().out
    assert rc == 1
    assert "read 2  produced 1  rejected 1" in out and "rejected wrong_topic" in out
    assert [v for *_x, v in consume_all(kafka_bootstrap, topic_name(env, "market"),
                                        expect=1)] == [encode(_quote(0))]
    assert consume_all(kafka_bootstrap, topic_name(env, "fills"), idle_s=1.0) == []


@pytest.mark.kafka
def test_publish_binance_klines_as_bars_with_a_config_file_exits_0(kafka_bootstrap, tmp_path,
                                                                   capsys):
    """A Binance kline CSV becomes bars on the market topic; env and Kafka from --config."""
    env = f"p{uuid.uuid4().hex[:8]}"
    _topics(kafka_bootstrap, env, "market")
    cfg = tmp_path / "guard.toml"
    cfg.write_text(f'env = "{env}"\n\n[kafka]\nbootstrap = "{kafka_bootstrap}"\n')
    csv = tmp_path / "BTCUSDT-1m-klines.csv"
    csv.write_text("open_time,open,high,low,close,volume,close_time,quote_volume,count\n"
                   "1700000000000,100,101,99,100.5,10,1700000059999,1000,5\n"
                   "1700000060000,100.5,102,100,101,12,1700000119999,1200,6\n")
    rc = main(["publish", str(csv), "--topic", "market", "--config", str(cfg),
               "--venue", "binance", "--instrument", "BTC-USDT"])
    assert rc == 0
    assert capsys.readouterr().out.splitlines()[0] == "read 2  produced 2  rejected 0"
    got = consume_all(kafka_bootstrap, topic_name(env, "market"), expect=2)
    bars = [decode("m", v) for *_x, v in got]
    assert all(isinstance(b, Bar) for b in bars)
    assert sorted(b.close for b in bars) == [100.5, 101.0]
    assert {b.venue for b in bars} == {"binance"}


def test_publish_check_only_needs_no_kafka(tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_bytes(encode(_quote(0)) + b"\n")
    rc = main(["publish", str(data), "--topic", "market", "--check", "--brokers",
               "127.0.0.1:1"])
    assert rc == 0
    assert "read 1  checked (not produced: --check) 1  rejected 0" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "says"), [
    (["--topic", "commands"], "publish --topic"),
    (["--topic", "market", "--brokers", "127.0.0.1:1"], "cannot reach Kafka at 127.0.0.1:1"),
])
def test_publish_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, says):
    data = tmp_path / "mine.jsonl"
    data.write_bytes(encode(_quote(0)) + b"\n")
    rc = main(["publish", str(data), *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and says in err and "Traceback" not in err


def test_publish_a_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    rc = main(["publish", str(tmp_path / "nope.jsonl"), "--topic", "market", "--check"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.jsonl" in err and len(err.splitlines()) == 1




@pytest.mark.kafka
def test_a_delivery_the_broker_never_acknowledges_raises_delivery_error(tmp_path):
    """A broker of its own, stopped mid-publish: flush raises DeliveryError naming the
    reason and counting what was acknowledged before (the CLI shows it as one line, exit 2)."""
    broker = DevBroker(tmp_path / "broker")
    info = broker.start()
    try:
        _topics(info.bootstrap, "gone", "market")
        p = Publisher(KafkaSettings(bootstrap=info.bootstrap), "gone", delivery_timeout_s=2)
        p.produce("market", _quote(0))
        p.flush()
        assert p.acked == 1
    finally:
        broker.stop()
    p.produce("market", _quote(1))
    with pytest.raises(DeliveryError, match=r"1 record\(s\) not acknowledged") as err:
        p.flush()
    assert err.value.undelivered == 1
    assert any("timed out" in r for r in err.value.reasons)
