"""Properties of the SDK's parsers on arbitrary input: workflow references and documents, node
targets (``owner/app@alias/path``) and app ids. Each either parses or raises its typed error, and
what is formatted from parts parses back to the same parts. Deterministic (``derandomize``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from klieg.client import split_app_id
from klieg.exceptions import InvalidRequestError, ValidationError
from klieg.workflow.document import (
    NodeSpec,
    Reference,
    load_workflow,
    parse_reference,
    references,
    resolve,
    validate_input,
)

pytestmark = pytest.mark.timeout(60)

checked = settings(derandomize=True, database=None, deadline=None, max_examples=300)
fewer = settings(checked, max_examples=150)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
node_ids = st.from_regex(r"[a-z][a-z0-9_]{0,62}", fullmatch=True)
# A path segment: anything without "." or whitespace, with digit strings of every kind mixed in.
segments = (
    st.text(
        st.characters(exclude_characters=".", exclude_categories=["Zs", "Cc"]), min_size=1
    ).filter(lambda s: not any(c.isspace() for c in s))
    | st.integers(min_value=0, max_value=12).map(str)
    | st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=3)
)
references_ = st.builds(
    Reference, st.just("input") | node_ids, st.lists(segments, max_size=4).map(tuple)
)
owners = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)
apps = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
aliases = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True)
paths = st.from_regex(r"[A-Za-z0-9_.~-]+(/[A-Za-z0-9_.~-]+){0,3}", fullmatch=True)


def _walk(value: Any, picks: list[int]) -> tuple[Any, list[str]]:
    """The value some path leads to inside ``value`` and that path, chosen by ``picks``; only
    keys a reference can name (no ``.``, no whitespace, not empty) are followed."""
    path: list[str] = []
    for pick in picks:
        if isinstance(value, list) and value:
            index = pick % len(value)
            value, path = value[index], [*path, str(index)]
        elif isinstance(value, dict):
            keys = [k for k in value if k and "." not in k and not any(c.isspace() for c in k)]
            if not keys:
                break
            key = keys[pick % len(keys)]
            value, path = value[key], [*path, key]
        else:
            break
    return value, path


@checked
@given(st.text() | st.text().map(lambda s: "$" + s))
def test_parse_reference_is_exact_or_none(text: str) -> None:
    ref = parse_reference(text)
    assert ref is None or str(ref) == text


@checked
@given(references_)
def test_reference_round_trips_through_its_text(ref: Reference) -> None:
    assert parse_reference(str(ref)) == ref
    assert list(references({"a": [str(ref), "$$" + str(ref)]})) == [ref]


@checked
@given(references_, json_values)
@example(Reference("gen", ("\u00b2",)), [1, 2, 3])
@example(Reference("gen", ("\u0661",)), [1, 2, 3])
@example(Reference("gen", ("9" * 5000,)), [1, 2, 3])
@example(Reference("gen", ("0" * 5000 + "1",)), [1, 2, 3])
def test_resolve_raises_only_validation_errors(ref: Reference, value: Any) -> None:
    scope = {ref.source: value}
    before = json.dumps(scope)
    try:
        resolve({"x": [str(ref)]}, scope)
    except ValidationError as exc:
        assert str(ref) in str(exc.detail)
    assert json.dumps(scope) == before


@checked
@given(json_values, st.lists(st.integers(min_value=0, max_value=50), max_size=6))
def test_resolve_returns_a_copy_of_what_the_path_names(value: Any, picks: list[int]) -> None:
    want, path = _walk(value, picks)
    got = resolve(str(Reference("gen", tuple(path))), {"gen": value})
    assert got == want
    if isinstance(want, list | dict) and want:
        assert got is not want


@checked
@given(st.text())
def test_escaped_dollar_is_kept_literally(text: str) -> None:
    assert resolve({"k": "$$" + text}, {}) == {"k": "$" + text}


@checked
@given(st.text())
def test_node_target_rejects_only_with_validation_errors(app: str) -> None:
    try:
        owner, name, alias, path = NodeSpec(app=app).target()
    except ValidationError:
        return
    assert app.startswith(f"{owner}/{name}") and path.startswith("/")
    assert alias is None or f"@{alias}" in app


@checked
@given(owners, apps, st.none() | aliases, st.none() | paths)
def test_node_target_round_trips(owner: str, app: str, alias: str | None, path: str | None) -> None:
    text = f"{owner}/{app}" + (f"@{alias}" if alias else "") + (f"/{path}" if path else "")
    assert NodeSpec(app=text).target() == (owner, app, alias, "/" + (path or "").strip("/"))


@checked
@given(st.text())
@example("")
@example("/")
@example("workflows/")
@example("workflows/x")
def test_split_app_id_rejects_only_with_invalid_request(app_id: str) -> None:
    try:
        owner, app, _ = split_app_id(app_id)
    except InvalidRequestError:
        return
    assert owner and app and "/" not in app


@checked
@given(
    st.text(st.characters(exclude_characters="/"), min_size=1),
    st.text(st.characters(exclude_characters="/@"), min_size=1),
    st.none() | st.text(st.characters(exclude_characters="/"), min_size=1),
    st.none() | paths,
)
def test_split_app_id_round_trips(owner: str, app: str, ref: str | None, path: str | None) -> None:
    assume(owner != "workflows")
    app_ref = app + (f"@{ref}" if ref else "")
    app_id = f"{owner}/{app_ref}" + (f"/{path}" if path else "")
    assert split_app_id(app_id) == (owner, app_ref, path or "")
    assert split_app_id(f"workflows/{owner}/{app_ref}") == (f"workflows/{owner}", app_ref, "")


schemas = st.fixed_dictionaries(
    {"type": st.just("object")},
    optional={
        "properties": st.dictionaries(
            st.sampled_from(["x", "y"]),
            st.fixed_dictionaries(
                {},
                optional={"type": st.sampled_from(["string", "integer", "array"]) | json_values},
            ),
        ),
        "required": st.lists(st.sampled_from(["x", "y", "z"]), max_size=3),
    },
)


few_ids = st.sampled_from(["a", "b", "c", "d"])
doc_references = st.builds(
    Reference, st.just("input") | few_ids, st.lists(segments, max_size=3).map(tuple)
).map(str)
templates = st.recursive(
    json_scalars | doc_references,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
node_specs = st.fixed_dictionaries(
    {"app": st.sampled_from(["local/echo", "a/b@x/p", "acme/tool/run"]) | st.text(max_size=8)},
    optional={"input": st.dictionaries(st.text(max_size=4), templates, max_size=3)},
)
documents = st.fixed_dictionaries(
    {
        "nodes": st.dictionaries(
            few_ids | few_ids | few_ids | node_ids | st.text(max_size=4),
            node_specs | node_specs | node_specs | json_values,
            min_size=1,
            max_size=4,
        ),
        "output": templates,
    },
    optional={"input": schemas | schemas | schemas | json_values, "name": st.text(max_size=8)},
)
"""Workflow documents, most of them valid (few node ids, so references often hit one; cycles
too), with malformed parts mixed in."""


@fewer
@given(st.text() | documents.map(json.dumps))
@example("[" * 600 + "]" * 600)
@example("{a: " * 600 + "1" + "}" * 600)
@example(
    json.dumps(
        {
            "nodes": {
                "a": {"app": "local/echo", "input": {"x": json.loads("[" * 600 + "]" * 600)}}
            },
            "output": "$a",
        }
    )
)
@example('{"nodes": {"a": {"app": "local/echo"}}, "output": "\\ud800"}')
@example('{"nodes": {"a": {"app": "local/echo"}}, "output": {"\\udfff": 1}, "name": "w"}')
@example('{"nodes": {"a": {"app": "local/echo"}}, "output": "$a", "name": "\\ud800"}')
@example(
    '{"nodes": {"a": {"app": "e/l"}}, "output": "$a", "input": {"properties": {"\\ud800": {}}}}'
)
def test_load_workflow_text_raises_only_validation_errors(text: str) -> None:
    try:
        doc = load_workflow(text)
    except ValidationError:
        return
    assert doc.nodes and load_workflow(doc.to_dict()).digest() == doc.digest()


@fewer
@given(documents)
def test_load_workflow_mapping_raises_only_validation_errors(data: dict[str, Any]) -> None:
    try:
        doc = load_workflow(data)
    except ValidationError:
        return
    assert load_workflow(doc.to_dict()).digest() == doc.digest()


@pytest.mark.parametrize("length", [2, 1500])
def test_long_chains_and_their_cycles_are_checked(length: int) -> None:
    def chain(closed: bool) -> dict[str, Any]:
        nodes = {
            f"n{i}": {"app": "local/echo", "input": {"x": f"$n{i + 1}"} if i + 1 < length else {}}
            for i in range(length)
        }
        if closed:
            nodes[f"n{length - 1}"]["input"] = {"x": "$n0"}
        return {"nodes": nodes, "output": "$n0"}

    assert len(load_workflow(chain(closed=False)).nodes) == length
    with pytest.raises(ValidationError) as info:
        load_workflow(chain(closed=True))
    assert str(info.value.detail).startswith("cycle: n0 -> n1 -> ")
    assert str(info.value.detail).endswith(f"n{length - 1} -> n0")


@checked
@given(schemas, st.dictionaries(st.sampled_from(["x", "y", "z"]), json_values) | json_values)
@example({"type": "object", "properties": {"x": {"type": [["string"]]}}}, {"x": 1})
@example({"type": "object", "properties": {"x": {"type": [{"a": 1}, 2]}}}, {"x": 1})
def test_validate_input_raises_only_validation_errors(schema: dict[str, Any], value: Any) -> None:
    doc = load_workflow({"input": schema, "nodes": {"a": {"app": "local/echo"}}, "output": "$a"})
    try:
        validate_input(doc, value)
    except ValidationError as exc:
        assert isinstance(exc.detail, list) and exc.detail
        assert all(isinstance(e["loc"], list) and isinstance(e["msg"], str) for e in exc.detail)
