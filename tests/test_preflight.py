"""``riskguard run`` checks its signing key and playbook against the trust file before it
reads a record: a key the trust file does not authorise for what the playbook issues
stops start-up with one line naming the rule and the missing grant (no broker needed:
the check comes before Kafka is reached)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from riskguard.dataflows.demo import ISSUER, init_keys, write_config
from riskguard.operators.signing.crypto import Signer
from riskguard.operators.signing.trust import sign_trust_file
from riskguard.operators.signing.trust_toml import trust_doc_to_toml

from riskguard.cli import main

NOW = datetime.now(UTC)
ALL = {"actions": ["*"], "scopes": ["*"]}


def _setup(tmp: Path, entry: dict[str, Any] | None, *, issuer: str = ISSUER,
           two_person: dict[str, Any] | None = None) -> Path:
    """A guard config over the bundled playbook whose trust file lists the engine key as
    ``entry`` says (None: not at all), signed by the root."""
    keys = init_keys(tmp)
    engine = Signer.from_file(keys.signing_key)
    entries = [] if entry is None else [{"name": ISSUER, "public_key":
                                         engine.public_key.raw.hex(), **entry}]
    entries.append({"name": "root-only", "public_key": "ab" * 32, "role": "operator",
                    "actions": ["resume"], "scopes": ["*"]})
    keys.trust_file.write_text(trust_doc_to_toml(entries, serial=2, two_person=two_person))
    keys.trust_file.with_name("trust.toml.sig").unlink()
    sign_trust_file(keys.trust_file, Signer.from_file(tmp / "root.key"))
    config = write_config(tmp, "127.0.0.1:1", keys)
    if issuer != ISSUER:
        config.write_text(config.read_text().replace(f'issuer = "{ISSUER}"',
                                                     f'issuer = "{issuer}"'))
    return config


CASES: list[tuple[str, dict[str, Any] | None, dict[str, Any], str]] = [
    ("a key missing from the trust file", None, {}, "is not in the trust file"),
    ("an issuer the key is not bound to", {"role": "risk-engine", **ALL},
     {"issuer": "someone-else"}, "issuer 'someone-else' is not bound to the signing key"),
    ("the executor role", {"role": "executor", **ALL}, {}, "has role 'executor'"),
    ("the operator role (no audit checkpoints)", {"role": "operator", **ALL}, {},
     "has role 'operator'"),
    ("a revoked key", {"role": "risk-engine", "revoked": True, **ALL}, {}, "is revoked"),
    ("an expired key", {"role": "risk-engine", **ALL,
                        "not_before": NOW - timedelta(days=9),
                        "not_after": NOW - timedelta(days=1)}, {}, "expired at"),
    ("a key not valid yet", {"role": "risk-engine", **ALL,
                             "not_before": NOW + timedelta(days=1)}, {}, "valid from"),
    ("alert-only actions", {"role": "risk-engine", "actions": ["alert"], "scopes": ["*"]},
     {}, "rule 'flash_crash' rung 2 widen_quotes on venue:*: the signing key's grant in "
     "the trust file does not include action widen_quotes (its actions: alert)"),
    ("scopes limited to one venue", {"role": "risk-engine", "actions": ["*"],
                                     "scopes": ["venue:okx"]}, {},
     "rule 'flash_crash' rung 1 alert on venue:*: the signing key's grant in the trust "
     "file does not cover scope venue:* (its scopes: venue:okx)"),
    ("a rung the two-person rule covers", {"role": "risk-engine", **ALL},
     {"two_person": {"actions": ["halt_trading"], "scopes": ["firm:*"]}},
     "[two_person] rule needs two people for halt_trading"),
]


@pytest.mark.parametrize(("name", "entry", "extra", "says"), CASES, ids=[c[0] for c in CASES])
def test_run_refuses_a_signer_the_trust_file_does_not_authorise_in_one_line(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], name: str,
        entry: dict[str, Any] | None, extra: dict[str, Any], says: str) -> None:
    config = _setup(tmp_path, entry, **extra)
    code = main(["run", "--config", str(config), "--status-every", "0"])
    out, err = capfd.readouterr()
    assert code == 2, (name, out, err)
    assert says in err and "trust.toml" in err
    assert len(err.strip().splitlines()) == 1 and out == ""  # nothing started, nothing read


def test_a_trust_file_that_grants_the_whole_playbook_passes_preflight(tmp_path: Path) -> None:
    from riskguard.dataflows.guard import check_grants, load_guard_config, load_keys

    config = _setup(tmp_path, {"role": "risk-engine", "actions": ["*"],
                               "scopes": ["venue:*", "counterparty:*", "firm:*",
                                          "instrument:*", "underlying:*"]})
    cfg, _ = load_guard_config(config)
    signer, trust = load_keys(cfg)
    check_grants(cfg, signer, trust, int(NOW.timestamp() * 1e9))


@pytest.mark.kafka
@pytest.mark.slow
def test_an_unverifiable_last_checkpoint_names_the_command_that_starts_a_new_origin(
        tmp_path: Path, kafka_bootstrap: str, capfd: pytest.CaptureFixture[str]) -> None:
    """A run signed with a key the trust file no longer trusts left a checkpoint nobody can
    verify: the next run says which command starts a new chain origin, and that command
    starts (and ends, its input quiet)."""
    import uuid

    import msgspec
    from confluent_kafka import Producer
    from riskguard.connectors.topics import TopicsConfig, create_topics, topic_specs
    from riskguard.operators.audit import AuditConfig, AuditLogic

    keys = init_keys(tmp_path)
    env = f"pf{uuid.uuid4().hex[:6]}"
    config = write_config(tmp_path, kafka_bootstrap, keys, env)
    create_topics({"bootstrap.servers": kafka_bootstrap}, topic_specs(env, TopicsConfig()))
    stranger = Signer.from_private_bytes(bytes(range(32)), issuer=ISSUER)
    log = AuditLogic("riskguard/p0", stranger, AuditConfig(checkpoint_every=1))
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for item in log.on_event({"n": 1}):
        producer.produce(f"{env}.riskguard.audit.v1", msgspec.json.encode(item))
    assert producer.flush(30) == 0
    assert main(["run", "--config", str(config), "--status-every", "0"]) == 2
    err = capfd.readouterr().err
    assert "bad_checkpoint" in err and "--audit-origin riskguard-" in err
    origin = err.split("--audit-origin ", 1)[1].split()[0]
    assert main(["run", "--config", str(config), "--status-every", "0",
                 "--audit-origin", origin]) == 0


def test_an_automatic_resume_the_trust_file_does_not_let_the_guard_sign_is_a_warning(
        tmp_path: Path) -> None:
    """The demo's trust file asks two people for a resume of firm:*; the playbook lifts
    its firm-wide mitigation of an unacknowledged command by itself: that resume would be
    refused, which fails closed (the mitigation stays until an operator lifts it), so
    start-up says so and goes on."""
    from riskguard.dataflows.guard import check_grants, load_guard_config, load_keys

    keys = init_keys(tmp_path)
    cfg, _ = load_guard_config(write_config(tmp_path, "127.0.0.1:1", keys))
    signer, trust = load_keys(cfg)
    notes = check_grants(cfg, signer, trust, int(NOW.timestamp() * 1e9))
    assert any("rule 'unacknowledged_command' resumes automatically on firm:*" in n
               and "[two_person]" in n for n in notes)


def test_a_reroute_rung_needs_every_venue_and_a_hedge_rung_its_instrument() -> None:
    """A reroute's targets are whichever venues are healthy, and a hedge trades its
    instrument: the key must be granted those scopes too, or its commands are refused."""
    from riskguard.operators.mitigation.preflight import preflight
    from riskguard.operators.mitigation.rules import PlaybookConfig, Rule, Rung
    from riskguard.operators.signing.trust import TrustStore, parse_trust
    from riskguard.schemas import Action

    key = Signer.from_private_bytes(bytes(32), issuer="guard")

    def missing(scopes: list[str], rung: Rung) -> str | None:
        trust = TrustStore(parse_trust(trust_doc_to_toml([{
            "name": "guard", "public_key": key.public_key.hex(), "role": "risk-engine",
            "actions": ["*"], "scopes": scopes}])))
        rule = Rule(name="r", signal="heartbeat_loss", target="counterparty", ladder=(rung,))
        return preflight(trust, key.key_id, PlaybookConfig(issuer="guard", rules=(rule,)),
                         now_ns=0)

    reroute = Rung(action=Action.REROUTE_ORDER_FLOW)
    hedge = Rung(action=Action.HEDGE_DELTA,
                 params={"target_delta": 0.0, "hedge_instrument": "okx/BTC-PERP"})
    assert "rung 1 reroute_order_flow to other venues: the signing key's grant in the trust " \
           "file does not cover scope venue:*" in (missing(["counterparty:*", "firm:*"],
                                                           reroute) or "")
    assert missing(["counterparty:*", "venue:*", "firm:*"], reroute) is None
    assert "with instrument:okx/BTC-PERP" in (missing(["counterparty:*", "firm:*"], hedge)
                                              or "")
    assert missing(["counterparty:*", "instrument:okx/*", "firm:*"], hedge) is None


def test_a_command_lifetime_the_trust_file_does_not_allow_stops_run(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``[playbook] ttl_s = 7200`` under the trust file's default of an hour: every
    subscriber would refuse every command (ttl_too_long), so the guard does not start."""
    config = _setup(tmp_path, {"role": "risk-engine", **ALL})
    playbook = tmp_path / "playbook.toml"
    text = playbook.read_text()
    assert "ttl_s = 300.0" in text
    playbook.write_text(text.replace("ttl_s = 300.0", "ttl_s = 7200.0", 1))
    code = main(["run", "--config", str(config), "--status-every", "0"])
    out, err = capfd.readouterr()
    assert code == 2, (out, err)
    assert "ttl_s 7200" in err and "3600 s" in err and "trust.toml" in err, err
    assert len(err.strip().splitlines()) == 1 and out == ""
