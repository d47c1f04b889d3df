"""Fuzz every platform route for longer than the suite does, from its OpenAPI document.

    .venv/bin/python bench/fuzz.py                      # 200 examples per route and mode
    .venv/bin/python bench/fuzz.py --examples 1000
    .venv/bin/python bench/fuzz.py --postgres           # the registry on a fresh PostgreSQL db

A fresh ``klieg up`` in a temporary home (echo deployed; with ``--postgres`` its registry in a
database created on ``KLIEG_TEST_POSTGRES_URL``'s server and dropped afterwards); each operation
of ``GET /openapi.json`` gets ``--examples`` generated requests with valid data and as many
with invalid data (schemathesis, fixed seed), each checked as ``tests/e2e/test_fuzz.py`` checks
them: no 5xx, the declared status, media type and document, invalid data refused. One JSON
line: the registry, operations, cases, examples per case, seconds, and each failing case with
the first line of its failure (none is the goal).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.platform import APPS, running_platform
from tests.e2e.test_fuzz import CASES, OPERATIONS, fuzz
from tests.postgres import fresh_database


def summary(exc: BaseException) -> str:
    """The first line of each failure ``exc`` holds (a group holds several)."""
    found = getattr(exc, "exceptions", None) or [exc]
    return "; ".join((str(e).strip().splitlines() or [type(e).__name__])[0] for e in found)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--postgres", action="store_true", help="the registry on PostgreSQL")
    args = parser.parse_args()
    failures: dict[str, str] = {}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        env = {}
        if args.postgres:
            env["KLIEG_DATABASE_URL"] = stack.enter_context(fresh_database("klieg_fuzz"))
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="klieg-fuzz-"))
        platform = stack.enter_context(running_platform(Path(tmp) / "home", extra_env=env))
        platform.bootstrap()
        platform.deploy(APPS / "echo" / "app.py")
        for label, mode in CASES:
            case = f"{label} ({mode})"
            try:
                fuzz(label, platform, args.examples, mode)
            except Exception as exc:  # a failing case is reported, the others still run
                failures[case] = summary(exc)
            print(f"{case}: {'FAILED' if case in failures else 'ok'}", file=sys.stderr)
    print(
        json.dumps(
            {
                "registry": "postgresql" if args.postgres else "sqlite",
                "operations": len(OPERATIONS),
                "cases": len(CASES),
                "examples_per_case": args.examples,
                "seconds": round(time.monotonic() - started, 1),
                "failing_cases": len(failures),
                "failures": failures,
            }
        )
    )


if __name__ == "__main__":
    main()
