"""klieg.input_schema: bodies checked against endpoint and workflow schemas before they run."""

from __future__ import annotations

import datetime
import enum
import itertools
import json
from typing import Any, Literal

import pydantic
import pytest
from pydantic import AnyUrl, BaseModel, ConfigDict, Field

import klieg
from klieg.exceptions import ValidationError
from klieg.input_schema import InputSchema, url_problem


class Level(enum.IntEnum):
    low = 1
    high = 2


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: int = Field(1, ge=1, le=10)


class Body(BaseModel):
    text: str
    n: int = 0
    f: float = 0.0
    flag: bool = False
    image: klieg.Image | None = None
    images: list[klieg.Image] = []
    link: AnyUrl | None = None
    when: datetime.datetime | None = None
    mode: Literal["fast", "slow"] = "fast"
    level: Level = Level.low
    inner: Inner | None = None
    pair: tuple[int, str] = (1, "x")
    counts: dict[str, int] = {}
    mask_url: str = ""
    anything: Any = None
    short: str = Field("", max_length=3)
    some: list[int] = Field([1], min_length=1)


SCHEMA = InputSchema(Body.model_json_schema())


def _pydantic_accepts(value: Any) -> bool:
    try:
        Body.model_validate_json(json.dumps(value))
    except pydantic.ValidationError:
        return False
    return True


def _locs(errors: list[dict[str, Any]]) -> list[list[Any]]:
    return [e["loc"] for e in errors]


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"n": "5"},
        {"n": " 5 "},
        {"n": "1_000"},
        {"n": "5.0"},
        {"n": 5.0},
        {"n": True},
        {"n": 10**40},
        {"f": "1e3"},
        {"f": "nan"},
        {"f": True},
        {"flag": "yes"},
        {"flag": "OFF"},
        {"flag": 1},
        {"flag": 0.0},
        {"when": 1_700_000_000},
        {"when": "2024-01-01T00:00:00"},
        {"level": "2"},
        {"inner": {"a": "3"}},
        {"pair": [1, "a"]},
        {"counts": {"a": "1"}},
        {"some": ["2"]},
        {"image": None},
        {"image": {"url": "https://example.com/a.png", "width": "4"}},
        {"images": [{"url": "data:image/png;base64,AAAA"}, {"url": "http://h/x.png"}]},
        {"mask_url": "cat.png"},
        {"link": "https://example.com"},
        {"anything": {"file_url": "file:///etc/passwd"}},
    ],
)
def test_what_lax_validation_converts_is_accepted(fields: dict[str, Any]) -> None:
    body = {"text": "x", **fields}
    assert _pydantic_accepts(body), "the case itself must be valid for the model"
    assert SCHEMA.errors(body) == []


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({}, ["body", "text"], "missing"),
        ({"text": 5}, ["body", "text"], "string_type"),
        ({"text": "x", "n": "five"}, ["body", "n"], "int_type"),
        ({"text": "x", "n": 5.5}, ["body", "n"], "int_type"),
        ({"text": "x", "n": None}, ["body", "n"], "int_type"),
        ({"text": "x", "n": "inf"}, ["body", "n"], "int_type"),
        ({"text": "x", "flag": 2}, ["body", "flag"], "bool_type"),
        ({"text": "x", "flag": "maybe"}, ["body", "flag"], "bool_type"),
        ({"text": "x", "mode": "medium"}, ["body", "mode"], "enum"),
        ({"text": "x", "level": 3}, ["body", "level"], "enum"),
        ({"text": "x", "inner": {"a": 0}}, ["body", "inner", "a"], "greater_than_equal"),
        ({"text": "x", "inner": {"a": 11}}, ["body", "inner", "a"], "less_than_equal"),
        ({"text": "x", "inner": {"a": 1, "b": 2}}, ["body", "inner", "b"], "extra_forbidden"),
        ({"text": "x", "pair": ["a", "a"]}, ["body", "pair", 0], "int_type"),
        ({"text": "x", "counts": {"a": "many"}}, ["body", "counts", "a"], "int_type"),
        ({"text": "x", "short": "abcd"}, ["body", "short"], "string_too_long"),
        ({"text": "x", "some": []}, ["body", "some"], "too_short"),
        ({"text": "x", "image": {}}, ["body", "image", "url"], "missing"),
        ({"text": "x", "image": 7}, ["body", "image"], "dict_type"),
        ({"text": "x", "images": [{"url": "h"}, {}]}, ["body", "images", 1, "url"], "missing"),
        (["text"], ["body"], "dict_type"),
    ],
)
def test_what_the_model_refuses_is_named(body: Any, loc: list[Any], kind: str) -> None:
    assert not _pydantic_accepts(body), "the case itself must be invalid for the model"
    errors = SCHEMA.errors(body)
    assert [(e["loc"], e["type"]) for e in errors] == [(loc, kind)]
    with pytest.raises(ValidationError) as info:
        SCHEMA.check(body)
    assert info.value.status_code == 422
    assert info.value.detail == errors
    assert all(set(e) == {"loc", "msg", "type"} and e["msg"] for e in errors)


def test_no_value_the_model_accepts_is_refused() -> None:
    """Every combination of these field values: where pydantic accepts the body, so does the
    check (its only extra refusals are URL schemes, and none of these values has a bad one)."""
    options: dict[str, list[Any]] = {
        "n": [0, "7", 2.0, 2.5, "x", True, None],
        "flag": [True, "no", 1, 3, None],
        "inner": [None, {"a": "5"}, {"a": 0}, {"a": 2, "z": 1}, "x"],
        "image": [None, {"url": "https://h/i.png"}, {"url": 3}, {"file_name": "x"}],
        "when": [None, 0, "2020-01-01", []],
        "level": [1, "2", 3, "low"],
    }
    refused_by_both = 0
    for combo in itertools.product(*options.values()):
        body = {"text": "t", **dict(zip(options, combo, strict=True))}
        errors = SCHEMA.errors(body)
        accepted = _pydantic_accepts(body)
        assert not (errors and accepted), (body, errors)
        refused_by_both += bool(errors) and not accepted
    assert refused_by_both > 5000  # the check does refuse most of what the model refuses


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "FTP://files.example.com/a.png", "gopher://h:70/x", "s3://b/k"]
)
def test_media_urls_of_other_schemes_are_refused(url: str) -> None:
    cases = [
        ({"text": "x", "image": {"url": url}}, ["body", "image", "url"]),
        ({"text": "x", "images": [{"url": "h"}, {"url": url}]}, ["body", "images", 1, "url"]),
        ({"text": "x", "mask_url": url}, ["body", "mask_url"]),
    ]
    for body, loc in cases:
        errors = SCHEMA.errors(body)
        assert [(e["loc"], e["type"]) for e in errors] == [(loc, "url_scheme")], body
        assert "not allowed" in errors[0]["msg"]
    assert _locs(SCHEMA.errors({"text": "x", "link": "ftp://h/x"})) == [["body", "link"]]


def test_allowed_urls_and_strings_without_a_scheme() -> None:
    for url in ("https://h/a.png", "http://127.0.0.1:8000/files/u/x?sig=1", "data:,hi", ""):
        assert url_problem(url) is None
    assert url_problem("weights/model.bin") is None
    assert url_problem("  file:///x") is not None
    assert SCHEMA.errors({"text": "file:///etc/passwd"}) == []  # not a URL field


def test_data_urls_longer_than_the_limit_are_refused() -> None:
    url = "data:text/plain;base64," + "A" * 100
    body = {"text": "x", "image": {"url": url}}
    assert SCHEMA.errors(body, max_data_url=len(url)) == []
    errors = SCHEMA.errors(body, max_data_url=len(url) - 1)
    assert [(e["loc"], e["type"]) for e in errors] == [(["body", "image", "url"], "url_too_long")]
    assert str(len(url)) in errors[0]["msg"]


def test_strict_mode_applies_json_schema_types_as_written() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "f": {"type": "number"}, "img_url": {}},
        "required": ["n"],
    }
    strict, lax = InputSchema(schema, strict=True), InputSchema(schema)
    assert strict.errors({"n": 3.0}) == []
    assert _locs(strict.errors({"n": True, "f": "1"})) == [["body", "n"], ["body", "f"]]
    assert lax.errors({"n": True, "f": "1"}) == []
    assert _locs(strict.errors({"n": 1, "img_url": "file:///x"})) == [["body", "img_url"]]


def test_what_it_cannot_read_it_accepts() -> None:
    odd = InputSchema(
        {
            "type": "object",
            "properties": {
                "a": {"$ref": "https://elsewhere/schema.json"},
                "b": {"type": "custom"},
                "c": {"pattern": "^x$", "type": "string"},
            },
        }
    )
    assert odd.errors({"a": 1, "b": [], "c": "y"}) == []
    recursive = InputSchema(
        {
            "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
            "$ref": "#/$defs/Node",
        }
    )
    deep: dict[str, Any] = {}
    for _ in range(5000):
        deep = {"next": deep}
    assert recursive.errors(deep) == []
    assert _locs(recursive.errors({"next": {"next": 5}})) == [["body", "next", "next"]]
