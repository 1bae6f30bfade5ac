"""Every dead letter names its input (topic, partition, offset) and is audited, whether the
source refused the bytes or a later step refused the record."""

from __future__ import annotations

import json
import pickle
import uuid

import msgspec
import pytest
from riskguard.connectors.replay import ReplayFile
from riskguard.dataflows.backtest import run_backtest
from riskguard.dataflows.demo import ISSUER
from riskguard.dataflows.guard import load_guard_config
from riskguard.operators.signing.crypto import PAYLOAD_COMMAND, Signer, encode_envelope
from riskguard.operators.signing.crypto import sign_envelope as sign
from riskguard.schemas import Fill, MitigationCommand, Scope, ScopeKind, decode, encode
from riskguard.schemas.base import source_of, stamp_source
from riskguard.schemas.commands import Action, Audience

from tests.test_backtest import cascade  # noqa: F401 - the scenario, its keys and config

NS = 1_000_000_000


@pytest.fixture(scope="module")
def run(cascade: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: F811
    """A short scenario file with a malformed line and a one-person firm resume in it."""
    work = tmp_path_factory.mktemp("prov")
    keys = cascade["keys"]
    cfg, cfg_hash = load_guard_config(cascade["cfg"])
    recs = cascade["recs"][:300]
    ts = recs[150].ts
    resume = MitigationCommand(
        command_id=str(uuid.uuid4()), issuer=ISSUER, seq=1, issued_at=ts,
        expires_at=ts + 60 * NS, audience=Audience(env=cfg.env, topic=cfg.topic("commands")),
        action=Action.RESUME, scope=Scope(kind=ScopeKind.FIRM, value="*"),
        params={"actions": ["halt_trading"]}, reason="one person only")
    env = sign(PAYLOAD_COMMAND, msgspec.json.encode(resume),
               [Signer.from_file(keys.signing_key, issuer=ISSUER)])
    lines = [encode(r) for r in recs[:150]]
    bad_at = sum(len(x) + 1 for x in lines)
    lines.append(b'{"type":"trade","ts":')
    env_at = bad_at + len(lines[-1]) + 1
    lines.append(encode_envelope(env))
    lines += [encode(r) for r in recs[150:]]
    data = work / "input.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    out = work / "out"
    res = run_backtest(cfg, cfg_hash, files=[ReplayFile(data)], out_dir=out)
    audit = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    return {"res": res, "bad_at": bad_at, "env_at": env_at, "audit": audit,
            "name": data.name}


def _dead(run: dict, reason: str):  # type: ignore[no-untyped-def]
    found = [d for d in run["res"].dead_letters if d.reason == reason]
    assert found, sorted(d.reason for d in run["res"].dead_letters)
    return found[0]


def test_a_malformed_line_names_its_file_and_offset(run: dict) -> None:
    dl = _dead(run, "malformed")
    assert (dl.offset, run["name"] in dl.topic) == (run["bad_at"], True)


def test_a_refused_operator_command_names_the_input_it_came_from(run: dict) -> None:
    dl = _dead(run, "command_two_person_required")
    assert run["name"] in dl.topic and dl.offset == run["env_at"]


def test_every_dead_letter_is_audited(run: dict) -> None:
    audited = [a for a in run["audit"] if a.get("kind") == "rejected_input"]
    assert len(audited) == len(run["res"].dead_letters) >= 2
    offsets = {a["body"].get("offset") for a in audited}
    assert {run["bad_at"], run["env_at"]} <= offsets


def test_where_a_record_was_read_survives_pickling_between_workers() -> None:
    fill = decode("t", encode(Fill(id="f1", venue="okx", counterparty="okx",
                                   instrument="BTC-USDT", side="buy", qty=1.0, price=2.0,
                                   ts=1)))
    stamp_source(fill, "prod.riskguard.fills.v1", 2, 77)
    again = pickle.loads(pickle.dumps(fill))
    assert source_of(again) == ("prod.riskguard.fills.v1", 2, 77)
    assert again == fill and encode(again) == encode(fill)  # not part of the wire form


def test_a_fill_the_exposure_step_refuses_names_its_partition_and_offset() -> None:
    """A fill for an instrument the exposure config does not declare is refused by the
    exposure step, after the source: its dead letter still names where it was read."""
    from riskguard.operators.exposure import Router

    from tests.test_exposure import worked_config

    cfg = worked_config()
    fill = Fill(id="f1", venue="okx", counterparty="okx", instrument="NOPE-USDT", side="buy",
                qty=1.0, price=1.0, ts=NS)
    stamp_source(fill, "prod.riskguard.fills.v1", 4, 77)
    dead = Router(cfg.validate(), cfg).route(fill, now=5)
    assert (dead.reason, dead.topic, dead.partition, dead.offset) == (
        "unknown_instrument", "prod.riskguard.fills.v1", 4, 77)
