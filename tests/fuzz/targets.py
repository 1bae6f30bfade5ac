"""Run one fuzz target under atheris (coverage-guided, libFuzzer).

Run: ``python tests/fuzz/targets.py TARGET [libFuzzer args...] [CORPUS_DIR ...]``,
TARGET one of codec, envelope, resign, trust, config, audit, proof, formats (see
``tests/fuzz/harness.py`` for what each checks). For example::

    python tests/fuzz/seeds.py /tmp/corpus codec
    python tests/fuzz/targets.py codec -runs=100000 -max_len=8192 /tmp/corpus/codec

A broken invariant stops the run and libFuzzer writes the input to
``<-artifact_prefix>crash-<sha1>``; replay one input with
``python tests/fuzz/targets.py codec crash-<sha1>``.

With ``RISKGUARD_FUZZ_FINDINGS=DIR`` set, a broken invariant does not stop the run:
the first input of each distinct failure (exception type and the line that raised
it) is saved as ``DIR/<target>-<kind>-<signature>``, and every occurrence is
appended to ``DIR/findings.tsv`` (target, kind, signature, message), kind being
``crash`` or ``false_accept``. ``bench/fuzz.py`` runs targets this way.

The JSON targets (codec, envelope, resign, audit, proof) mix a structure-aware
mutator (``harness.MUTATORS``: values swapped for edge values, keys dropped,
repeated or added) with libFuzzer's byte-level mutations.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import atheris

# Comparison feedback from str methods (startswith, endswith); atheris 3.0.0 has a
# regex hook too, but it fails on bytes patterns (json_limits compiles one).
atheris.enabled_hooks.add("str")
with atheris.instrument_imports(include=["riskguard", "tomllib"]):
    import harness

    from riskguard.environment import FUZZ_FINDINGS

    harness.prepare(sys.argv[1] if len(sys.argv) > 1 else "")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in harness.TARGETS:
        sys.stderr.write(f"usage: {argv[0]} TARGET [libFuzzer args...]; TARGET one of "
                         f"{', '.join(harness.TARGETS)}\n")
        sys.exit(2)
    name = argv[1]
    target = harness.TARGETS[name]
    findings = os.environ.get(FUZZ_FINDINGS)
    if findings:
        target = harness.keep_going(name, target, Path(findings))
    structural = harness.MUTATORS.get(name)
    if structural is None:
        atheris.Setup([argv[0], *argv[2:]], target)
    else:
        atheris.Setup([argv[0], *argv[2:]], target, custom_mutator=mixed(structural))
    atheris.Fuzz()


def mixed(structural: Callable[[bytes, int], bytes | None]) -> Callable[[bytes, int, int], bytes]:
    """A custom mutator: one time in four a structural change of the JSON (when it is
    JSON and fits), else libFuzzer's own byte-level mutations."""

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        if seed % 4 == 0:
            out = structural(data, seed >> 2)
            if out is not None and len(out) <= max_size:
                return out
        return atheris.Mutate(data, max_size)

    return mutate


if __name__ == "__main__":
    main(sys.argv)
