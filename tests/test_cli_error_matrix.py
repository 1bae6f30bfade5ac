"""Every bad invocation of the ``riskguard`` command line is answered with one line that says
what was wrong and what to do, and its documented exit code: never a traceback, never
librdkafka's own ``%3|...`` log lines.

Each case runs ``main()`` in this process with the file descriptors captured (librdkafka
writes to fd 2 directly, so ``capfd`` sees what a terminal would); a few run as
``python -m riskguard.cli`` subprocesses as well. An unreachable broker is a closed local
port: refused at once, so the matrix stays fast.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from riskguard.dataflows.demo import init_keys, write_config
from riskguard.operators.signing.crypto import generate_key_file, save_public_key

from riskguard.cli import main

BIN = Path(sys.executable).parent


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Case:
    """One bad invocation: its words (``{x}`` filled from the fixtures), the exit code it
    must give, where its one line goes, and words that line must hold."""

    name: str
    argv: str
    code: int = 2
    says: tuple[str, ...] = ()
    stream: str = "err"  # "err": one line on stderr, stdout empty; "out": a FAIL line
    env: dict[str, str] = field(default_factory=dict)


CLOSED = "cannot reach Kafka at 127.0.0.1:{port}: connection refused"
CASES = [
    # -- the command line itself
    Case("no command", "", says=("name a command",)),
    Case("unknown command", "frobnicate", says=("invalid choice",)),
    Case("unknown option", "keys generate {tmp}/k --frob", says=("unrecognized arguments",)),
    Case("missing required option", "run", says=("--config", "--help")),
    Case("missing action", "audit", says=("ACTION",)),
    Case("bad log level", "keys check-trust {trust} --roots {roots}",
         env={"RISKGUARD_LOG": "loud"}, says=("RISKGUARD_LOG", "debug")),
    Case("misspelt variable", "keys check-trust {trust} --roots {roots}",
         env={"RISKGUARD_METRICS_PROT": "3030"},
         says=("RISKGUARD_METRICS_PROT", "did you mean `RISKGUARD_METRICS_PORT`")),
    # -- keys
    Case("key into a missing folder", "keys generate {tmp}/no/such/dir/k.key",
         says=("No such file or directory", "its folder must exist")),
    Case("key over an existing file", "keys generate {trust}", says=("refusing to overwrite",)),
    Case("check-trust of a missing file", "keys check-trust {tmp}/nope.toml --roots {roots}",
         says=("nope.toml",)),
    Case("sign-trust with a missing key", "keys sign-trust {trust} --key {tmp}/nope.key",
         says=("nope.key",)),
    # -- audit (a log that cannot be read is a FAIL verdict: exit 1, on stdout)
    Case("audit of a missing file", "audit verify --file /nope.jsonl --pubkey {pub}", code=1,
         stream="out", says=("FAIL", "/nope.jsonl")),
    Case("audit without keys", "audit verify --file /nope.jsonl", says=("--trust/--pubkey",)),
    Case("audit without a source", "audit verify --pubkey {pub}", says=("--file", "--topic")),
    Case("audit topic, broker down", "audit verify --topic t --pubkey {pub} --brokers {closed}",
         code=1, stream="out", says=("FAIL", CLOSED, "--brokers HOST:PORT")),
    Case("audit proof of a missing file", "audit check-proof {tmp}/nope.json --pubkey {pub}",
         code=1, stream="out", says=("FAIL", "nope.json")),
    Case("audit prove from a missing file", "audit prove x --file {tmp}/nope.jsonl", code=1,
         stream="out", says=("FAIL",)),
    # -- Kafka unreachable: one line naming host:port, within the probe's timeout
    Case("topics on a closed port", "topics create --bootstrap {closed}",
         says=(CLOSED, "--bootstrap HOST:PORT", "riskguard broker start")),
    Case("topics, verbose, closed port", "-v topics create --bootstrap {closed}",
         says=(CLOSED,)),
    Case("topics, bad bootstrap", "topics create --bootstrap nohostport",
         says=("kafka.bootstrap", "host:port")),
    Case("topics with a missing config", "topics create --config {tmp}/nope.toml",
         says=("nope.toml",)),
    Case("demo on a closed port", "demo --bootstrap {closed}", says=(CLOSED, "--bootstrap")),
    Case("subscribe on a closed port", "subscribe --brokers {closed} --topic t --env e "
         "--trust {trust} --roots {roots}", says=(CLOSED, "--brokers HOST:PORT")),
    Case("publish on a closed port", "command publish {cmd} --brokers {closed} --topic t",
         says=(CLOSED,)),
    Case("command seq from a closed port", "command new --action halt_trading --scope firm:* "
         "--reason r --key {key} --issuer riskguard-guard --env demo --topic t "
         "--brokers {closed} --out {tmp}/c.json", says=(CLOSED,)),
    # -- subscribe keeps its documented 3 for a trust file it cannot load
    Case("subscribe without a trust file", "subscribe --topic t --env e --trust {tmp}/n.toml "
         "--roots {roots}", code=3, says=("trust file error",)),
    # -- command
    Case("show a missing file", "command show {tmp}/nope.json", says=("nope.json",)),
    Case("new with a bad scope", "command new --action halt_trading --scope everywhere "
         "--reason r --key {key} --issuer i --env e --topic t --seq 1 --out {tmp}/c2.json",
         says=("--scope",)),
    # -- run: every start-up problem before anything runs
    Case("run a missing config", "run --config {tmp}/nope.toml", says=("nope.toml",)),
    Case("run without [keys]", "run --config {nokeys}", says=("keys: is required", "fix it in")),
    Case("run with a missing signing key", "run --config {nokey}",
         says=("signing key", "cannot be read", "check [keys] in")),
    Case("run on a closed port", "run --config {down}", says=(CLOSED, "[kafka] bootstrap")),
    Case("run a market process without its key", "run --config {marketnokey}",
         says=(CLOSED, "[kafka] bootstrap")),
    Case("run with a bad bytewax argument", "run --config {config} -- -x", says=("-x",)),
    Case("run with a missing recovery dir", "run --config {config} -- -r {tmp}/nope -s 5 -b 5",
         says=("-r", "no such folder", "mkdir -p {tmp}/nope && python -m bytewax.recovery")),
    Case("run with an empty recovery dir", "run --config {config} -- -r {tmp} -s 5 -b 5",
         says=("-r", "no recovery partition", "python -m bytewax.recovery {tmp} 1")),
    Case("run with a negative status interval", "run --config {config} --status-every -1",
         says=("--status-every",)),
    # -- the rest
    Case("backtest without [keys]", "backtest --config {nokeys} --data {tmp}/d.jsonl "
         "--out {tmp}/bt", says=("keys: is required",)),
    Case("backtest a missing file", "backtest --config {config} --data {tmp}/nope.jsonl "
         "--out {tmp}/bt", says=("nope.jsonl",)),
    Case("stress with no scenario", "stress run", says=("name a scenario",)),
    Case("stress an unknown scenario", "stress run nosuch --out {tmp}/st", says=("nosuch",)),
    Case("calibrate without labels", "calibrate --config {config} --data {tmp}/d.jsonl "
         "--out {tmp}/cal", says=("--labels",)),
    Case("status of a closed port", "status --url http://127.0.0.1:{port}/metrics", code=1,
         stream="out", says=("127.0.0.1",)),
    Case("status of a malformed URL", "status --url http://[::1", code=1, stream="out",
         says=("DOWN", "bad URL")),
    *(Case(f"status --timeout {v}", f"status --url http://127.0.0.1:{{port}}/m --timeout {v}",
           says=("--timeout", "above 0")) for v in ("-1", "nan", "inf", "soon")),
    Case("status --serve on port 99999", "status --serve --port 99999",
         says=("--port", "0 to 65535")),
    *(Case(f"status --interval {v}", f"status --serve --interval {v}", says=("--interval",))
      for v in ("nan", "0", "-2")),
    *(Case(f"new with --ttl {v}", "command new --action halt_trading --scope firm:* --reason r "
           f"--key {{key}} --issuer i --env e --topic t --seq 1 --out {{tmp}}/c3.json "
           f"--ttl={v}", says=("--ttl",)) for v in ("nan", "inf", "1e300", "0", "-5")),
    Case("stress with negative runs", "stress run flash_crash --runs -1 --out {tmp}/st",
         says=("--runs", "0 or more")),
    Case("run with an endless status interval", "run --config {config} --status-every inf",
         says=("--status-every",)),
    Case("backtest with batch size 0", "backtest --config {config} --sample --out {tmp}/bt "
         "--batch-size 0", says=("--batch-size", "1 or more")),
    Case("broker with an unknown action", "broker frob", says=("invalid choice",)),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Keys, a root-signed trust file, guard configs (good, no [keys], a missing key, a
    closed port) and a signed command file, all real, none needing a broker."""
    tmp = tmp_path_factory.mktemp("matrix")
    port = closed_port()
    keys = init_keys(tmp)
    pub = tmp / "engine.pub"
    save_public_key(pub, generate_key_file(tmp / "other.key").public_key)
    config = write_config(tmp, f"127.0.0.1:{port}", keys)
    text = config.read_text()
    nokey = text.replace('signing_key = "engine.key"', 'signing_key = "gone.key"')
    variants = {"down": text, "nokey": nokey, "nokeys": text[:text.index("[keys]")],
                # a market process signs nothing: a key it does not have does not stop it
                "marketnokey": nokey + '[tier]\nrole = "market"\nindex = 0\n'}
    for name, body in variants.items():
        (tmp / f"{name}.toml").write_text(body)
    cmd = tmp / "cmd.json"
    assert main(["command", "new", "--action", "halt_trading", "--scope", "firm:*", "--reason",
                 "r", "--key", str(keys.signing_key), "--issuer", "riskguard-guard", "--env",
                 "demo", "--topic", "t", "--seq", "1", "--out", str(cmd)]) == 0
    return {"tmp": str(tmp), "port": str(port), "closed": f"127.0.0.1:{port}",
            "trust": str(keys.trust_file), "roots": str(keys.roots_file),
            "key": str(keys.signing_key), "pub": str(pub), "cmd": str(cmd),
            "config": str(config), **{n: str(tmp / f"{n}.toml") for n in variants}}


def _argv(case: Case, files: dict[str, str]) -> list[str]:
    return shlex.split(case.argv.format(**files))


def _check(case: Case, files: dict[str, str], code: int, out: str, err: str) -> None:
    says = [s.format(**files) for s in case.says]
    where = f"{case.name}: exit {code}\nstdout: {out!r}\nstderr: {err!r}"
    assert code == case.code, where
    assert "Traceback" not in out + err, where
    assert "%3|" not in out + err and "%4|" not in out + err, where
    text = err if case.stream == "err" else out
    assert len(text) < 1000, where  # a message, never a whole config on one line
    if case.stream == "err":
        assert out == "", where
        assert err.count("\n") == 1 and err.startswith("riskguard"), where
    else:
        assert err == "", where
        assert text.startswith("FAIL") or case.code != 1 or "FAIL" not in says, where
    for s in says:
        assert s in text, f"{s!r} missing; {where}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_invocation_is_one_line_with_its_exit_code(case: Case, files, capfd,
                                                       monkeypatch) -> None:
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RISKGUARD_LOG", raising=False) if "RISKGUARD_LOG" not in case.env \
        else None
    capfd.readouterr()
    try:
        code = main(_argv(case, files))
    except SystemExit as stop:  # argparse's own exit, after its one line
        code = int(stop.code or 0)
    out, err = capfd.readouterr()
    _check(case, files, code, out, err)


def test_the_matrix_is_at_least_thirty_invocations() -> None:
    assert len(CASES) >= 30


AS_PROCESSES = ("topics on a closed port", "demo on a closed port", "audit topic, broker down",
                "run with a missing signing key", "key into a missing folder",
                "run on a closed port", "misspelt variable")


@pytest.mark.parametrize("name", AS_PROCESSES)
def test_bad_invocation_as_a_process_is_one_line(name: str, files) -> None:
    """The same, as a user runs it: ``python -m riskguard.cli`` in its own process."""
    case = next(c for c in CASES if c.name == name)
    env = {k: v for k, v in os.environ.items() if k != "RISKGUARD_LOG"} | case.env
    proc = subprocess.run([sys.executable, "-m", "riskguard.cli", *_argv(case, files)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    _check(case, files, proc.returncode, proc.stdout, proc.stderr)


def test_audit_verify_without_brokers_names_the_default_and_the_flag(files) -> None:
    """No --brokers: it tries 127.0.0.1:9092 and says so, with the flag to set."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 9092)) == 0:
            pytest.skip("something listens on 127.0.0.1:9092 here")
    proc = subprocess.run([sys.executable, "-m", "riskguard.cli", "audit", "verify", "--topic",
                           "t", "--pubkey", files["pub"]],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and proc.stderr == "", proc
    assert proc.stdout.count("\n") == 1, proc.stdout
    assert "cannot reach Kafka at 127.0.0.1:9092" in proc.stdout
    assert "--brokers HOST:PORT (default 127.0.0.1:9092, or [kafka] of --config)" in proc.stdout


def test_a_clone_named_riskguard_in_the_current_folder_is_named(tmp_path: Path) -> None:
    """From the parent folder of a clone named riskguard, ``python -m`` imports the clone as
    a namespace package; the CLI says so in one line instead of a traceback."""
    clone = tmp_path / "riskguard"
    clone.mkdir()
    root = Path(__file__).resolve().parents[1]
    for name in ("riskguard", "operators", "connectors", "dataflows", "schemas"):
        (clone / name).symlink_to(root / name)
    proc = subprocess.run([sys.executable, "-m", "riskguard.cli", "--version"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{clone} is a folder named riskguard, not the riskguard package" in proc.stderr
    assert "run the command from another folder" in proc.stderr


SUGGESTED = re.compile(r"(?:with: |\(see )(riskguard(?: [a-z][a-z -]*?)?)(?: --help)?(?:\)|;|$)")


def test_every_command_a_message_suggests_is_a_real_command(files, capfd,
                                                             monkeypatch) -> None:
    """The commands the messages tell a user to run (``riskguard broker start``,
    ``riskguard audit verify --help`` ...) are commands this CLI takes."""
    monkeypatch.delenv("RISKGUARD_LOG", raising=False)
    suggested: set[str] = set()
    for case in CASES:
        capfd.readouterr()
        with contextlib.suppress(SystemExit):
            main(_argv(case, files))
        out, err = capfd.readouterr()
        suggested.update(m.group(1).strip() for m in SUGGESTED.finditer(out + err))
    assert {"riskguard", "riskguard broker start", "riskguard run"} <= suggested, suggested
    for command in sorted(suggested):
        with pytest.raises(SystemExit) as stop:
            main([*command.split()[1:], "--help"])
        assert stop.value.code == 0, command


def test_a_backtest_whose_dataflow_fails_says_so_in_one_line(files, tmp_path) -> None:
    """A step that raises ends the backtest with one line naming the error, exit 1:
    not bytewax's panic report and not an "unexpected error" line. Only the command's
    own debug level adds the traceback, not a root logger an embedding process set to
    debug. It runs in a process of its own, as a user's command does: bytewax's
    ``cluster_main``, which other tests run, leaves a panic hook in its process that
    prints the traceback of every later run's failing step."""
    script = (
        "import logging, sys\n"
        "logging.getLogger().setLevel(logging.DEBUG)\n"
        "from riskguard.operators.detection.detector import DetectorLogic\n"
        "def fail(self, fv):\n"
        "    raise ValueError('the step failed')\n"
        "DetectorLogic.moves = fail\n"
        "from riskguard.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RISKGUARD_LOG", "RUST_BACKTRACE")}
    done = subprocess.run(
        [sys.executable, "-c", script, "backtest", "--config", files["config"], "--sample",
         "--out", str(tmp_path / "bt")], capture_output=True, text=True, env=env, timeout=300,
        check=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr == ("riskguard backtest: the dataflow stopped: ValueError: the step "
                           "failed\n"), done.stderr
