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

    All commands of one issuer go through one key (so one worker), which is
    what makes ``seq`` monotonic. Non-commands and reused ``command_id``s go
    to ``errs``. A signing failure raises ``SigningError`` and stops the flow.

    ``seq_floor`` is the highest ``seq`` this issuer already delivered (e.g.
    :func:`riskguard.connectors.command_log.last_signed_seq` over the commands
    topic, read at start-up). Whenever the step starts, fresh or resumed, the
    counter continues above it: a restart whose snapshot predates commands it
    had delivered, or a fresh run onto a topic with older commands, never
    reuses a ``seq``. Without it, a resumed counter jumps by
    ``config.resume_seq_gap`` instead (a fresh start then begins at 1).

    ``trust_serial`` (the serial of the trust file the guard runs on) is stated on every
    command: :func:`riskguard.connectors.command_log.last_signed_seq` reads it back.
    """
    cfg = config or SignConfig()
    issuer = cfg.issuer or signer.issuer
    exact = sign_builder(signer, cfg, trust_serial=trust_serial)

    def builder(state: SignState | None) -> Any:
        # A restart replays input from the last snapshot. Commands signed after it were
        # delivered but are re-derived now, maybe in another order (several processes):
        # reusing their seqs for different commands would make subscribers drop those as
        # replays. So the counter starts above everything delivered; subscribers drop
        # re-emitted identical commands by id (or as already in force).
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
