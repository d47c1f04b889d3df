"""Every platform route fuzzed from its OpenAPI document (schemathesis, a fixed seed), with data
the document calls valid, data it calls invalid, and valid data with a NUL appended to every
text (path segments, query values, each string of the body: PostgreSQL's text holds none, and
a generator rarely makes one): no answer is a 5xx; every answer, success or error, has the
status, media type and document the operation declares; and data the document calls invalid is
refused (4xx), so the validation is at least as strict as the document says.

The document is the one ``GET /openapi.json`` serves (``gateway/openapi.py``; a test below checks
they are the same). A dedicated platform, since the fuzzer makes tenants, keys and secrets at
random; then a shorter pass against a platform whose registry is a fresh PostgreSQL database
(its text holds no NUL, where SQLite's does). ``bench/fuzz.py`` runs the same with many more
examples per route.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from klieg_platform.gateway.app import _openapi
from tests.e2e.platform import APPS, Platform, running_platform
from tests.postgres import ADMIN_URL, fresh_database

pytestmark = pytest.mark.timeout(900)

EXAMPLES = int(os.environ.get("KLIEG_FUZZ_EXAMPLES", "10"))
PG_EXAMPLES = int(os.environ.get("KLIEG_FUZZ_PG_EXAMPLES", "3"))
SCHEMA = schemathesis.openapi.from_dict(_openapi())
SCHEMA.config.generation.update(with_security_parameters=False)  # every case sends our key
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _negatable(label: str) -> bool:
    """Whether the operation has anything to make invalid: parameters, or a body model."""
    definition: dict[str, Any] = OPERATIONS[label].definition.raw
    content = (definition.get("requestBody") or {}).get("content", {})
    body = content.get("application/json", {}).get("schema", {})
    return bool(definition.get("parameters")) or "$ref" in body


NUL = "nul"
"""The mode of valid cases whose every text gets a NUL appended."""
CASES = sorted(
    [(label, GenerationMode.POSITIVE.value) for label in OPERATIONS]
    + [(label, mode) for label in OPERATIONS if _negatable(label)
       for mode in (GenerationMode.NEGATIVE.value, NUL)]
)  # fmt: skip


def with_nul(value: Any) -> Any:
    """``value`` with a NUL appended to every string in it."""
    if isinstance(value, str):
        return value + "\x00"
    if isinstance(value, list):
        return [with_nul(item) for item in value]
    if isinstance(value, dict):
        return {key: with_nul(item) for key, item in value.items()}
    return value


def _with_platform(home: Any, env: dict[str, str] | None = None) -> Iterator[Platform]:
    with running_platform(home, extra_env=env) as platform:
        platform.bootstrap()
        platform.deploy(APPS / "echo" / "app.py")
        yield platform


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from _with_platform(tmp_path_factory.mktemp("fuzz-home"))


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    try:
        with fresh_database("klieg_fuzz") as url:
            yield url
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {ADMIN_URL}: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def fuzzed_on_postgres(
    tmp_path_factory: pytest.TempPathFactory, postgres_database: str
) -> Iterator[Platform]:
    env = {"KLIEG_DATABASE_URL": postgres_database}
    yield from _with_platform(tmp_path_factory.mktemp("fuzz-pg-home"), env)


def test_the_served_document_is_the_fuzzed_one(fuzzed: Platform) -> None:
    served = httpx.get(f"{fuzzed.url}/openapi.json").json()
    assert served == _openapi()
    assert len(OPERATIONS) == sum(len(methods) for methods in served["paths"].values())
    assert {label for label, _ in CASES} == set(OPERATIONS)


def fuzz(label: str, platform: Platform, examples: int = EXAMPLES, mode: str = "positive") -> None:
    """``examples`` generated requests to one operation, valid or invalid by ``mode``, each
    checked."""
    headers = {"Authorization": f"Key {platform.key}"}
    generated = GenerationMode.POSITIVE if mode == NUL else GenerationMode(mode)
    strategy = OPERATIONS[label].as_strategy(generated)
    checks = CHECKS if mode != NUL else CHECKS[:-1]  # a NUL may be fine in free text

    @given(case=strategy)
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
        if mode == NUL:  # path parameters are sent as they are: already percent-encoded
            case.path_parameters = {k: f"{v}%00" for k, v in (case.path_parameters or {}).items()}
            case.query = with_nul(case.query)
            if isinstance(case.body, dict | list):
                case.body = with_nul(case.body)
        case.call_and_validate(base_url=platform.url, headers=headers, checks=checks, timeout=60)

    run()


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_route(label: str, mode: str, fuzzed: Platform) -> None:
    fuzz(label, fuzzed, mode=mode)


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_route_on_postgres(label: str, mode: str, fuzzed_on_postgres: Platform) -> None:
    fuzz(label, fuzzed_on_postgres, PG_EXAMPLES, mode)
