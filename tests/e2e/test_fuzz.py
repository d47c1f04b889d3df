"""Every platform route fuzzed from its OpenAPI document (schemathesis, a fixed seed): no answer
is a 5xx, and every answer matches the document (errors are ``{"detail", "error_type"}``).

The document is the one ``GET /openapi.json`` serves (``gateway/openapi.py``; a test below checks
they are the same). A dedicated platform, since the fuzzer makes tenants, keys and secrets at
random. ``bench/fuzz.py`` runs the same with many more examples per route.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from klieg_platform.gateway.app import _openapi
from tests.e2e.platform import APPS, Platform, running_platform

pytestmark = pytest.mark.timeout(600)

EXAMPLES = int(os.environ.get("KLIEG_FUZZ_EXAMPLES", "10"))
SCHEMA = schemathesis.openapi.from_dict(_openapi())
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(tmp_path_factory.mktemp("fuzz-home")) as platform:
        platform.bootstrap()
        platform.deploy(APPS / "echo" / "app.py")
        yield platform


def test_the_served_document_is_the_fuzzed_one(fuzzed: Platform) -> None:
    served = httpx.get(f"{fuzzed.url}/openapi.json").json()
    assert served == _openapi()
    assert len(OPERATIONS) == sum(len(methods) for methods in served["paths"].values())


def fuzz(label: str, platform: Platform, examples: int = EXAMPLES) -> None:
    """``examples`` generated requests to one operation, each checked."""
    headers = {"Authorization": f"Key {platform.key}"}

    @given(case=OPERATIONS[label].as_strategy())
    @settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        if case.path == "/fleet/stream":  # a stream that ends in time (bad values stay bad)
            for_s = (case.query or {}).get("for_s")
            if for_s is None or (isinstance(for_s, (int, float)) and 1 < for_s <= 600):
                case.query = {**(case.query or {}), "for_s": 1}
        case.call_and_validate(
            base_url=platform.url,
            headers=headers,
            checks=[not_a_server_error, response_schema_conformance],
            timeout=30,
        )

    run()


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_route(label: str, fuzzed: Platform) -> None:
    fuzz(label, fuzzed)
