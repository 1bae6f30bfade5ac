"""Walk an exception's cause chain (bytewax wraps errors raised inside steps)."""

from __future__ import annotations


def chain(err: BaseException | None) -> list[BaseException]:
    """``err`` and every exception it was raised from, outermost first."""
    out: list[BaseException] = []
    while err is not None and err not in out:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def chain_text(err: BaseException | None) -> str:
    return " | ".join(f"{type(e).__name__}: {e}" for e in chain(err))
