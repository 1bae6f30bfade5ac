"""Bytewax adapter for :mod:`riskguard.operators.signing.commands`.

>>> import bytewax.operators as op
>>> from bytewax.dataflow import Dataflow
>>> from bytewax.testing import TestingSink, TestingSource, run_main
>>> from riskguard.operators.signing.crypto import Signer
>>> from riskguard.operators.signing import decode_command
>>> from riskguard.schemas import Audience, MitigationCommand, Scope, ScopeKind
>>> signer = Signer.from_private_bytes(bytes(32), issuer="engine-1")
>>> cmds = [MitigationCommand(command_id=f"c{i}", issuer="engine-1", issued_at=1,
...     expires_at=2, audience=Audience(env="prod", topic="cmds"), action="alert",
...     scope=Scope(kind=ScopeKind.VENUE, value="okx"), reason="r") for i in range(3)]
>>> flow = Dataflow("sign_demo")
>>> signed = sign_commands("sign", op.input("in", flow, TestingSource(cmds)), signer)
>>> out = []
>>> op.output("out", signed.oks, TestingSink(out))
>>> run_main(flow)
>>> [decode_command(e).seq for e in out]
[1, 2, 3]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from riskguard.operators.core.base import SplitOut, split_dead_letters, stateful_logic
from riskguard.operators.signing.commands import SignConfig, SignState, sign_builder
from riskguard.operators.signing.crypto import Signer
from riskguard.schemas.commands import MitigationCommand, SignedEnvelope


@operator
def sign_commands(
    step_id: str,
    commands: Stream[MitigationCommand],
    signer: Signer,
    *,
    config: SignConfig | None = None,
    seq_floor: int | None = None,
    trust_serial: int = 0,
) -> SplitOut[SignedEnvelope]:
    """Sign commands into envelopes with a monotonic per-issuer ``seq``.

    All commands of one issuer go through one key (one worker), which makes ``seq``
    monotonic. Non-commands and reused ``command_id``s go to ``errs``; a signing failure
    raises ``SigningError`` and stops the flow.

    ``seq_floor`` is the highest ``seq`` this issuer already delivered (e.g.
    :func:`riskguard.connectors.command_log.last_signed_seq` at start-up): the counter,
    fresh or resumed, continues above it, so no ``seq`` is reused. Without it, a resumed
    counter jumps by ``config.resume_seq_gap`` (a fresh start begins at 1).
    ``trust_serial`` (the trust file's serial) is stated on every command; the same read
    gives it back at the next start.
    """
    cfg = config or SignConfig()
    issuer = cfg.issuer or signer.issuer
    exact = sign_builder(signer, cfg, trust_serial=trust_serial)

    def builder(state: SignState | None) -> Any:
        # commands re-derived after a restart may come in another order: reusing their
        # seqs would make subscribers drop different commands as replays
        if seq_floor is not None:
            if state is None:
                state = SignState(issuer=issuer, last_seq=seq_floor)
            elif seq_floor > state.last_seq:
                state = dataclasses.replace(state, last_seq=seq_floor)
        elif state is not None and cfg.resume_seq_gap:
            state = dataclasses.replace(state, last_seq=state.last_seq + cfg.resume_seq_gap)
        return exact(state)
    keyed = op.key_on("key", commands, lambda _c: issuer)
    out = stateful_logic("stateful", keyed, builder)
    return split_dead_letters("split", op.key_rm("unkey", out))
