"""Workflow documents: parsing, the builder, dependencies and order, validation, resolve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import klieg
from klieg.exceptions import ValidationError
from klieg.workflow import (
    NodeSpec,
    Reference,
    Workflow,
    WorkflowDoc,
    load_workflow,
    parse_reference,
    resolve,
    validate_input,
)

pytestmark = pytest.mark.timeout(30)

MOVIE_YAML = """
name: digits-movie
input:
  type: object
  properties: {digits: {type: string}}
  required: [digits]
nodes:
  gen:
    app: local/digits
    input: {digits: "$input.digits", seed: 0}
  strip:
    app: local/imagetools/grid
    input: {images: "$gen.digits", columns: 8}
  movie:
    app: local/video/frames
    input: {frames: ["$gen.digits.0", "$strip.image"], fps: 4}
output:
  image: "$strip.image"
  video: "$movie.video"
"""


def movie() -> WorkflowDoc:
    return load_workflow(MOVIE_YAML)


def error_of(source: Any) -> str:
    with pytest.raises(ValidationError) as info:
        load_workflow(source)
    assert info.value.status_code == 422
    return str(info.value.detail)


def doc(nodes: dict[str, Any], output: Any = "$a", **extra: Any) -> dict[str, Any]:
    return {"nodes": nodes, "output": output, **extra}


def test_yaml_json_path_and_dict_give_the_same_document(tmp_path: Path) -> None:
    parsed = movie()
    as_json = json.dumps(parsed.to_dict())
    (tmp_path / "m.json").write_text(as_json)
    (tmp_path / "m.yml").write_text(MOVIE_YAML)
    for source in (as_json, as_json.encode(), tmp_path / "m.json", tmp_path / "m.yml"):
        assert load_workflow(source) == parsed
    assert load_workflow(parsed.to_dict()) == parsed
    assert list(parsed.nodes) == ["gen", "strip", "movie"]
    assert parsed.nodes["gen"].input == {"digits": "$input.digits", "seed": 0}


def test_defaults() -> None:
    d = load_workflow({"nodes": {"a": {"app": "me/echo"}}, "output": "$a"})
    assert d.name is None
    assert d.input == {"type": "object"}
    assert d.nodes["a"].input == {}
    assert d.to_dict() == {
        "name": None,
        "input": {"type": "object"},
        "nodes": {"a": {"app": "me/echo", "input": {}}},
        "output": "$a",
    }


def test_builder_matches_the_yaml_document() -> None:
    wf = klieg.workflow.Workflow("digits-movie", input={"digits": "string"})
    gen = wf.node("gen", "local/digits", {"digits": wf.input.digits, "seed": 0})
    strip = wf.node("strip", "local/imagetools/grid", {"images": gen.digits, "columns": 8})
    frames = {"frames": [gen.digits[0], strip.image], "fps": 4}
    mov = wf.node("movie", "local/video/frames", frames)
    wf.output({"image": strip.image, "video": mov.video})
    built = wf.build()
    assert built == movie()
    assert built.digest() == movie().digest()
    assert load_workflow(wf.to_yaml()) == built
    assert load_workflow(wf.to_json()) == built
    assert klieg.load_workflow is load_workflow


def test_builder_refs_and_errors() -> None:
    wf = Workflow()
    a = wf.node("a", "me/echo", {"t": wf.input["odd-key"], "p": ("x", wf.input)})
    assert str(a.images[0].url) == "$a.images.0.url"
    assert str(a["path"]) == "$a.path"
    assert repr(a.x) == "Ref('$a.x')"
    with pytest.raises(TypeError):
        list(a)
    for bad in (-1, "a b", "a.b", ""):
        with pytest.raises(ValidationError, match="invalid path segment"):
            a[bad]
    with pytest.raises(ValidationError, match="node 'a' is defined twice"):
        wf.node("a", "me/echo")
    with pytest.raises(ValidationError, match="no output"):
        wf.build()
    wf.output(a.text)
    assert wf.to_dict()["nodes"]["a"]["input"] == {"t": "$input.odd-key", "p": ["x", "$input"]}
    full = Workflow("w", input={"type": "object", "properties": {"n": {"type": "integer"}}})
    assert full.schema == {"type": "object", "properties": {"n": {"type": "integer"}}}
    bad = Workflow()
    bad.node("b", "me/echo", {"x": bad.input.y})
    bad.output(Workflow().node("zz", "me/echo"))
    with pytest.raises(ValidationError, match="output refers to unknown node 'zz'"):
        bad.build()


def test_deps_and_layers_run_independent_nodes_together() -> None:
    m = movie()
    assert m.deps("gen") == set()
    assert m.deps("strip") == {"gen"}
    assert m.deps("movie") == {"gen", "strip"}
    assert m.output_deps() == {"strip", "movie"}
    assert m.order() == [["gen"], ["strip"], ["movie"]]
    diamond = load_workflow(
        doc(
            {
                "join": {"app": "me/j", "input": {"x": ["$left", "$right.v"]}},
                "right": {"app": "me/r", "input": {"v": "$root"}},
                "root": {"app": "me/a"},
                "left": {"app": "me/l", "input": {"v": "$root.x"}},
                "solo": {"app": "me/s"},
            },
            output="$join",
        )
    )
    assert diamond.order() == [["root", "solo"], ["right", "left"], ["join"]]


def test_target_parses_owner_app_alias_and_path() -> None:
    assert NodeSpec(app="local/digits").target() == ("local", "digits", None, "/")
    assert NodeSpec(app="local/imagetools/grid").target() == ("local", "imagetools", None, "/grid")
    assert NodeSpec(app="a-b/x_y@prod/v1/run/").target() == ("a-b", "x_y", "prod", "/v1/run")
    assert NodeSpec(app="o/a@rev-12ab").target() == ("o", "a", "rev-12ab", "/")
    for bad in ("local", "/x", "local/", "Local/x", "o/a@", "o/a//p", "o/a b"):
        with pytest.raises(ValidationError, match='app must be "owner/app'):
            NodeSpec(app=bad).target()


@pytest.mark.parametrize(
    ("nodes", "output", "expected"),
    [
        (
            {"gen": {"app": "me/d"}, "strip": {"app": "me/g", "input": {"i": "$gn.digits"}}},
            "$strip",
            "node 'strip' refers to unknown node 'gn' in $gn.digits",
        ),
        (
            {
                "a": {"app": "me/x", "input": {"v": ["$b.y"]}},
                "b": {"app": "me/x", "input": {"v": "$a"}},
            },
            "$a",
            "cycle: a -> b -> a",
        ),
        (
            {
                "s": {"app": "me/x"},
                "a": {"app": "me/x", "input": {"v": "$c", "w": "$s"}},
                "b": {"app": "me/x", "input": {"v": "$a"}},
                "c": {"app": "me/x", "input": {"v": {"deep": "$b.z"}}},
            },
            "$a",
            "cycle: a -> c -> b -> a",
        ),
        ({"a": {"app": "me/x", "input": {"v": "$a.x"}}}, "$a", "node 'a' refers to itself in $a.x"),
        ({"Gen": {"app": "me/x"}}, 1, "node 'Gen': a node id must match"),
        ({"input": {"app": "me/x"}}, 1, "node 'input': a node id must match"),
        ({"gen": {"app": "local"}}, 1, "node 'gen': app must be \"owner/app[/path]\""),
        ({"gen": {"app": "me/x", "inputs": {}}}, 1, "node 'gen': inputs: Extra inputs"),
        ({"gen": {"app": 3}}, 1, "node 'gen': app: Input should be a valid string"),
        ({"a": {"app": "me/x"}}, {"v": ["$a", "$nope.x"]}, "output refers to unknown node 'nope'"),
        ({}, 1, "a workflow needs at least one node"),
    ],
)
def test_invalid_documents_name_the_node(nodes: dict[str, Any], output: Any, expected: str) -> None:
    assert expected in error_of(doc(nodes, output))


def test_other_invalid_documents(tmp_path: Path) -> None:
    assert "output: Field required" in error_of({"nodes": {"a": {"app": "me/x"}}})
    assert "extra: Extra inputs" in error_of(doc({"a": {"app": "me/x"}}, extra=1))
    assert "does not parse" in error_of("nodes: [1")
    (tmp_path / "bad.json").write_text("{'single': 'quotes'}")
    assert "does not parse" in error_of(tmp_path / "bad.json")
    assert "must be a mapping" in error_of("- 1")
    dated = "nodes: {a: {app: me/x, input: {d: 2024-01-01}}}\noutput: $a"
    assert "node 'a': input.d: a date is not a JSON value" in error_of(dated)
    schema = {"type": "object", "properties": {"p": {"type": "string"}}}
    undeclared = doc({"a": {"app": "me/x", "input": {"v": "$input.q"}}}, input=schema)
    assert "node 'a' refers to undeclared input 'q' in $input.q" in error_of(undeclared)
    out = doc({"a": {"app": "me/x", "input": {"v": "$input.p.deep"}}}, "$input.q", input=schema)
    assert "output refers to undeclared input 'q'" in error_of(out)
    assert "type must be" in error_of(doc({"a": {"app": "me/x"}}, input={"type": "string"}))
    free = doc({"a": {"app": "me/x", "input": {"v": "$input.any"}}}, {"x": "$input", "y": "$a"})
    assert load_workflow(free).output == {"x": "$input", "y": "$a"}


def test_references_escapes_and_literals() -> None:
    assert parse_reference("$gen.images.0.url") == Reference("gen", ("images", "0", "url"))
    assert parse_reference("$input") == Reference("input")
    for literal in ("$$gen", "costs $5", "$5.00", "$Gen.x", "x$gen", "$gen is here", 5, None):
        assert parse_reference(literal) is None
    d = load_workflow(doc({"a": {"app": "me/x", "input": {"p": "$$nope", "q": "a $nope"}}}))
    assert d.deps("a") == set()


def test_resolve_nested_templates_indexes_and_escapes() -> None:
    scope = {
        "input": {"prompt": "hi", "n": 2},
        "gen": {"images": [{"url": "u0"}, {"url": "u1"}], "seed": 7},
    }
    template = {
        "a": "$gen.images.1.url",
        "b": ["$input.prompt", {"c": "$gen.seed"}, 3, None, True],
        "all": "$gen",
        "money": "$$5",
        "text": "not $gen",
        "whole": "$input",
    }
    out = resolve(template, scope)
    assert out == {
        "a": "u1",
        "b": ["hi", {"c": 7}, 3, None, True],
        "all": scope["gen"],
        "money": "$5",
        "text": "not $gen",
        "whole": {"prompt": "hi", "n": 2},
    }
    out["all"]["images"].append("x")
    assert len(scope["gen"]["images"]) == 2
    assert template["money"] == "$$5"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("$gen.images.3", "$gen.images.3: index 3 out of range"),
        ("$gen.imgs", "$gen.imgs: no key 'imgs'"),
        ("$gen.images.first", "$gen.images.first: 'first' is not an index"),
        ("$gen.seed.x", "$gen.seed.x: cannot look up 'x' in a number"),
        ("$other.x", "$other.x: no value for 'other'"),
    ],
)
def test_resolve_errors_name_the_reference(ref: str, expected: str) -> None:
    scope = {"gen": {"images": ["a", "b"], "seed": 7}}
    with pytest.raises(ValidationError) as info:
        resolve({"x": [ref]}, scope)
    assert expected in str(info.value.detail)


def test_validate_input() -> None:
    schema = {
        "type": "object",
        "properties": {
            "digits": {"type": "string"},
            "n": {"type": "integer"},
            "f": {"type": "number"},
            "flag": {"type": "boolean"},
            "items": {"type": "array"},
            "opt": {"type": ["string", "null"]},
        },
        "required": ["digits", "n"],
    }
    d = load_workflow(doc({"a": {"app": "me/x"}}, input=schema))
    validate_input(d, {"digits": "12", "n": 3, "f": 1, "flag": False, "items": [], "opt": None})
    validate_input(d, {"digits": "12", "n": 3.0, "extra": object()})
    with pytest.raises(ValidationError) as info:
        validate_input(d, {"n": True, "f": "x", "opt": 3})
    assert info.value.detail == [
        {"loc": ["body", "digits"], "msg": "Field required", "type": "missing"},
        {"loc": ["body", "n"], "msg": "Input should be of type integer", "type": "int_type"},
        {"loc": ["body", "f"], "msg": "Input should be of type number", "type": "float_type"},
        {
            "loc": ["body", "opt"],
            "msg": "Input should be of type string or null",
            "type": "string_type",
        },
    ]
    with pytest.raises(ValidationError) as info:
        validate_input(d, ["not", "an", "object"])
    assert info.value.detail[0]["loc"] == ["body"]
    validate_input(load_workflow(doc({"a": {"app": "me/x"}})), {"anything": 1})


def test_digest_is_stable_across_key_order() -> None:
    m = movie().to_dict()
    shuffled = {
        "output": dict(reversed(list(m["output"].items()))),
        "nodes": {k: dict(reversed(list(v.items()))) for k, v in m["nodes"].items()},
        "input": dict(reversed(list(m["input"].items()))),
        "name": m["name"],
    }
    assert load_workflow(shuffled).digest() == movie().digest()
    assert len(movie().digest()) == 64
    changed = json.loads(json.dumps(m))
    changed["nodes"]["strip"]["input"]["columns"] = 9
    assert load_workflow(changed).digest() != movie().digest()
