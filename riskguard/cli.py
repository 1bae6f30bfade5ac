"""The ``riskguard`` command line.

Subcommands live in ``riskguard/cli_<area>.py`` modules, each providing
``register(subparsers)``; this module only assembles them and reports errors.

Every error is one line on stderr, ``riskguard <command>: <what was wrong>;
<what to do>``, and exit code 2, never a traceback; verdict commands keep their own
codes (docs/cli.md). librdkafka's log lines go to the ``riskguard.kafka`` logger, shown
with ``-v`` (warnings), ``-vv`` (info) or ``-vvv`` / ``RISKGUARD_LOG=debug`` (everything,
with an unexpected error's traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import riskguard
from riskguard.errors import BrokerError, RiskguardError, describe_os_error

STARTED = time.perf_counter()
"""When the command line was loaded: a command's start-up counts from here."""

AREAS = (
    "broker", "topics", "keys", "audit", "subscribe", "command", "run", "demo",
    "backtest", "calibrate", "explain", "stress", "status", "publish", "replicas", "feed",
    "limit",
)
MAX_MESSAGE = 600  # characters of an error message shown (one line, whatever it holds)
VERBOSITY = ("off", "warning", "info", "debug")
UNLOADABLE: dict[str, str] = {}  # command -> why it cannot be loaded


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, and that takes ``-v`` anywhere."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(cli_prog=self.prog)  # the deepest subcommand's name wins
        self.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                          help="show librdkafka's and riskguard's log lines on stderr "
                          "(-v warnings, -vv info, -vvv debug; also RISKGUARD_LOG=LEVEL)")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}{self._did_you_mean(message)} "
                     f"(see {self.prog} --help)\n")

    def _did_you_mean(self, message: str) -> str:
        """``; did you mean ...?`` for a misspelt command (``runn``) or flag (``--confg``),
        '' if nothing is close."""
        from riskguard.validation import closest  # noqa: PLC0415  (msgspec: only on an error)

        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            close = closest(m[1], re.findall(r"'([^']*)'", m[2]))
            return f"; did you mean '{close}'?" if close is not None else ""
        known = _options(self)
        hints = []
        for word in getattr(self, "_words", []):
            flag = word.split("=", 1)[0]
            if flag.startswith("--") and flag not in known:
                close = closest(flag, sorted(known))
                if close is not None:
                    hints.append(f"{close} (for {flag})")
        return f"; did you mean {', '.join(hints)}?" if hints else ""


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its subcommands, all the way down."""
    known = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                known |= _options(sub)
    return known


def one_line(text: str) -> str:
    """``text`` on one line, cut to :data:`MAX_MESSAGE` characters.

    >>> one_line("a\\n  b")
    'a b'
    """
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_MESSAGE else flat[:MAX_MESSAGE - 1] + "…"


def shadowing_folder(pkg: Any = riskguard) -> str | None:
    """The folder ``import riskguard`` found instead of the package, if it did.

    A clone named ``riskguard`` in the current folder is a namespace package
    to Python (no ``__init__.py`` at its top): it has no ``__file__`` and hides
    the installed package from ``python -m``.

    >>> import types
    >>> ns = types.ModuleType("riskguard"); ns.__file__ = None; ns.__path__ = ["/src/riskguard"]
    >>> shadowing_folder(ns), shadowing_folder(riskguard)
    ('/src/riskguard', None)
    """
    if getattr(pkg, "__file__", None):
        return None
    paths = list(getattr(pkg, "__path__", []) or [])
    return str(paths[0]) if paths else "riskguard"


class _Interrupts:
    """Remembers a Ctrl-C while a command runs (it is still raised as KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.seen = False
        self._before: Any = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.seen = True
        signal.default_int_handler(signum, frame)

    def __enter__(self) -> _Interrupts:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._before = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._before is not None:
            signal.signal(signal.SIGINT, self._before)


def reach_kafka(brokers: Any, how: str) -> None:
    """Probe Kafka before a command does any work; a ``BrokerError`` that says what to do.

    ``how`` names how the user sets the address (e.g. ``--brokers HOST:PORT``).
    """
    from riskguard.connectors.topics import probe  # noqa: PLC0415  (keep start-up light)

    try:
        probe(brokers)
    except BrokerError as err:
        msg = (f"{err}; is Kafka running there? Set {how}, or start a dev broker with: "
               "riskguard broker start")
        raise BrokerError(msg) from None


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="riskguard",
        description="Streaming risk guard for automated crypto trading. Errors are one line "
                    "on stderr with exit code 2; see docs/cli.md.",
    )
    parser.add_argument("--version", action="version",
                        version=f"riskguard {getattr(riskguard, '__version__', '?')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for area in AREAS:
        try:
            module = importlib.import_module(f"riskguard.cli_{area}")
        except ModuleNotFoundError as err:
            if err.name == f"riskguard.cli_{area}":
                continue
            _unloadable(sub, area, err)
            continue
        except Exception as err:  # one broken command must not take the others down
            _unloadable(sub, area, err)
            continue
        module.register(sub)
    return parser


def _unloadable(sub: Any, area: str, err: Exception) -> None:
    """Register ``area`` as a command that says why it cannot be loaded."""
    why = f"{type(err).__name__}: {err}"
    UNLOADABLE[area] = (f"this command cannot be loaded ({why}); the installation is "
                        "incomplete or broken: reinstall riskguard (pip install -e . in a clone)")
    sub.add_parser(area, help=f"(cannot be loaded: {why})")


def _log_level(verbose: int, env: str | None) -> str:
    """The more talkative of ``-v`` (count) and ``$RISKGUARD_LOG``.

    >>> _log_level(0, None), _log_level(1, None), _log_level(1, "debug"), _log_level(0, "ERROR")
    ('off', 'warning', 'debug', 'error')
    """
    from riskguard.connectors.settings import LOG_LEVELS, log_level  # noqa: PLC0415

    named = log_level(env)
    flag = VERBOSITY[min(verbose, len(VERBOSITY) - 1)]
    ranks = {name: (lvl if lvl is not None else logging.CRITICAL + 10)
             for name, lvl in LOG_LEVELS.items()}
    return min((named, flag), key=lambda n: ranks[n])


def report(prog: str, err: BaseException, *, debug: bool = False) -> int:
    """Write ``err`` as one line on stderr, with its notes (``add_note``: what to do);
    returns the exit code (2)."""
    if isinstance(err, RiskguardError):
        text = str(err)
    elif isinstance(err, OSError):
        text = describe_os_error(err)
    elif type(err).__name__ == "KafkaException":
        first = err.args[0] if err.args else err
        reason = first.str() if hasattr(first, "str") else str(first)
        text = f"Kafka: {reason}; check the broker address and that it is up (-v shows " \
               "librdkafka's log)"
    elif isinstance(err, ImportError):
        text = (f"cannot load riskguard's code ({type(err).__name__}: {err}); the "
                "installation is incomplete or broken: reinstall riskguard (pip install -e . "
                "in a clone)")
    else:
        text = (f"unexpected {type(err).__name__}: {err}; this is a bug in riskguard, please "
                "report it with the traceback that RISKGUARD_LOG=debug prints")
    notes = getattr(err, "__notes__", None) or []  # what to do, added where it is known
    text = "; ".join([text, *notes])
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    sys.stderr.write(f"{prog}: {one_line(text)}\n")
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    folder = shadowing_folder()
    if folder is not None:
        sys.stderr.write(
            f"riskguard: {folder} is a folder named riskguard, not the riskguard package, and "
            "it hides the package because Python looks in the current folder first; run the "
            f"command from another folder (e.g. cd {folder})\n")
        return 2
    parser = build_parser()
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    if words and words[0] in UNLOADABLE:
        sys.stderr.write(f"riskguard {words[0]}: {UNLOADABLE[words[0]]}\n")
        return 2
    args = parser.parse_args(argv)
    prog = getattr(args, "cli_prog", "riskguard")
    func = getattr(args, "func", None)
    if func is None:
        sys.stderr.write(f"riskguard: name a command, one of {', '.join(AREAS)} (see "
                         "riskguard --help)\n")
        return 2
    from riskguard.connectors.settings import configure_logging  # noqa: PLC0415
    from riskguard.environment import LOG, check_environment  # noqa: PLC0415

    try:
        check_environment(os.environ)  # a misspelt RISKGUARD_* name stops every command
        level = _log_level(getattr(args, "verbose", 0), os.environ.get(LOG))
        before = configure_logging(level)
    except RiskguardError as err:
        return report(prog, err)
    interrupted = _Interrupts()
    try:
        with interrupted:
            return int(func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except BrokenPipeError:  # piped into head, say: the reader has gone, nothing to tell it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again
        return 0
    except Exception as err:
        if interrupted.seen:  # a C extension turned the Ctrl-C into another error
            sys.stderr.write(f"{prog}: interrupted\n")
            return 130
        return report(prog, err, debug=level == "debug")
    finally:
        configure_logging(before)  # main() may run inside another main() (the demo, tests)


if __name__ == "__main__":
    raise SystemExit(main())
