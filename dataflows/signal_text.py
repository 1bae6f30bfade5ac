"""How a signal reads in one line: the same words on the console and in reports."""

from __future__ import annotations

from riskguard.schemas import AnomalySignal


def score_text(sig: AnomalySignal) -> str:
    """What an anomaly signal says of its episode: the severity and the score against the
    threshold, the comparison as it is; a closing signal says ``closed`` and the score that
    closed it, and an easing one what it eased from (a critical episode is critical by
    its rules, so its score can stay above the warning threshold, or rise, as it eases).

    >>> from riskguard.schemas import Scope, ScopeKind, Severity
    >>> sig = AnomalySignal(id="s", key="k", scope=Scope(kind=ScopeKind.VENUE, value="okx"),
    ...                     ts=1, score=0.034, threshold=1.0, severity=Severity.CRITICAL, model="m",
    ...                     model_version="1", phase="close")
    >>> score_text(sig)
    'closed   score 0.034 < 1.000 (was critical)'
    >>> import msgspec
    >>> score_text(msgspec.structs.replace(sig, phase="open", score=2.5))
    'critical score 2.500 > 1.000'
    >>> score_text(msgspec.structs.replace(sig, phase="deescalate", score=2.4,
    ...                                    severity=Severity.WARN))
    'warn     score 2.400 > 1.000 (eased: no longer critical)'
    """
    sign = ">" if sig.score > sig.threshold else ("=" if sig.score == sig.threshold else "<")
    score = f"score {sig.score:.3f} {sign} {sig.threshold:.3f}"
    if sig.phase == "close":
        return f"closed   {score} (was {sig.severity.value})"
    if sig.phase == "deescalate":
        return f"{sig.severity.value:<8} {score} (eased: {_EASED.get(sig.severity.value, 'lower')})"
    return f"{sig.severity.value:<8} {score}"


_EASED = {"warn": "no longer critical", "info": "no longer a warning"}
