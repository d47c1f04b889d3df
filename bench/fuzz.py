"""Fuzz every platform route for longer than the suite does, from its OpenAPI document.

    .venv/bin/python bench/fuzz.py                 # 200 examples per route
    .venv/bin/python bench/fuzz.py --examples 1000

A fresh ``klieg up`` in a temporary home (echo deployed); each operation of ``GET /openapi.json``
gets ``--examples`` generated requests (schemathesis, fixed seed), each checked for a 5xx and
against the document. One JSON line: operations, examples per operation, seconds, and each
failing operation with the first line of its failure (none is the goal).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.platform import APPS, running_platform
from tests.e2e.test_fuzz import OPERATIONS, fuzz


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=200)
    args = parser.parse_args()
    failures: dict[str, str] = {}
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="klieg-fuzz-") as tmp,
        running_platform(Path(tmp) / "home") as platform,
    ):
        platform.bootstrap()
        platform.deploy(APPS / "echo" / "app.py")
        for label in sorted(OPERATIONS):
            try:
                fuzz(label, platform, args.examples)
            except Exception as exc:  # a failing operation is reported, the others still run
                failures[label] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"{label}: {'FAILED' if label in failures else 'ok'}", file=sys.stderr)
    print(
        json.dumps(
            {
                "operations": len(OPERATIONS),
                "examples_per_operation": args.examples,
                "seconds": round(time.monotonic() - started, 1),
                "failing_operations": len(failures),
                "failures": failures,
            }
        )
    )


if __name__ == "__main__":
    main()
