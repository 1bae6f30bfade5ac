"""The Java half of the Flink adapter: what must run in the JVM to be fast (a tick's rows
made into one row before Python sees them, :file:`java/TickBatches.java`; the records
file a backtest reads, :file:`java/RecordsFile.java`; the live guard's Kafka source and
sink, :file:`java/kafka/KafkaIo.java`, built only against the Kafka connector's jars).
Its source ships with the package and is compiled once, against the PyFlink in use,
into a jar in the user's cache; a cluster image builds it into Flink's ``lib/``
instead::

    python -m riskguard.flink.java_build --out /opt/flink/lib/riskguard-flink.jar \
        --kafka /opt/flink/lib/flink-connector-kafka.jar /opt/flink/lib/kafka-clients.jar
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from riskguard.errors import ConfigError

JAR_NAME = "riskguard-flink.jar"
SOURCES = Path(__file__).resolve().parent / "java"


def _pyflink_lib() -> Path:
    import pyflink  # noqa: PLC0415

    return Path(pyflink.__file__).resolve().parent


def _javac() -> str:
    home = os.environ.get("JAVA_HOME")
    found = (shutil.which("javac", path=str(Path(home) / "bin")) if home else None) \
        or shutil.which("javac")
    if found is None:
        raise ConfigError("javac", "a Java compiler (a JDK 11 or 17: the Flink job compiles "
                          f"its Java part once, or set $FLINK_HOME/lib/{JAR_NAME})", "none found")
    return found


def _sources(kafka: Sequence[str]) -> list[Path]:
    """The Java sources to build: the Kafka part only with the connector's jars."""
    return sorted(SOURCES.glob("*.java")) + (sorted(SOURCES.glob("kafka/*.java")) if kafka else [])


def build(out: Path, kafka: Sequence[str] = ()) -> Path:
    """Compile :data:`SOURCES` against PyFlink's jars (and the Kafka connector's,
    ``kafka``: paths or ``file://`` URLs) into the jar ``out``."""
    lib = _pyflink_lib()
    sources = _sources(kafka)
    with tempfile.TemporaryDirectory(prefix="riskguard-javac-") as tmp:
        classes = Path(tmp) / "classes"
        classpath = os.pathsep.join([*(str(lib / d / "*") for d in ("lib", "opt")),
                                     *(j.removeprefix("file://") for j in kafka)])
        done = subprocess.run([_javac(), "-nowarn", "--release", "11", "-cp", classpath,
                               "-d", str(classes), *map(str, sources)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigError("riskguard.flink Java sources", "sources javac compiles",
                              done.stderr.strip()[-2000:])
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(f".{os.getpid()}.part")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as jar:
            jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
            for f in sorted(classes.rglob("*.class")):
                jar.write(f, f.relative_to(classes).as_posix())
        partial.replace(out)  # atomic: a concurrent build finds a whole jar or none
    return out


def job_jars(kafka: Sequence[str] = ()) -> list[str]:
    """``file://`` URLs of the jars a job adds for its Java part: none where Flink's
    ``lib/`` has it (a cluster image), else the cached build for this PyFlink, these
    sources and the Kafka connector's jars ``kafka`` if given (built now if missing)."""
    flink_home = os.environ.get("FLINK_HOME")
    if flink_home and (Path(flink_home) / "lib" / JAR_NAME).exists():
        return []
    from pyflink.version import __version__ as pyflink_version  # noqa: PLC0415

    lib = _pyflink_lib()
    digest = hashlib.sha256(f"{lib} {pyflink_version} {' '.join(kafka)}".encode())
    for src in _sources(kafka):
        digest.update(src.read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    jar = cache / "riskguard" / "flink-java" / digest.hexdigest()[:16] / JAR_NAME
    if not jar.exists():
        build(jar, kafka)
    return [jar.as_uri()]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m riskguard.flink.java_build",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the jar to write")
    ap.add_argument("--kafka", nargs="*", default=[],
                    help="the Kafka connector's jars: build the live guard's Kafka part too")
    args = ap.parse_args(argv)
    print(build(Path(args.out), args.kafka))
    return 0


if __name__ == "__main__":
    sys.exit(main())
