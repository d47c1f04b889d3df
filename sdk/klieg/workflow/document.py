"""The workflow document model: parsing, validation, dependency order, references, ``resolve``.

The document format is described in ``klieg.workflow``; the Python builder is in
``klieg.workflow.builder``.

Example::

    doc = load_workflow(Path("movie.yaml"))
    validate_input(doc, {"digits": "0123"})
    doc.order()                                   # layers of node ids that can run together
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from klieg.exceptions import ValidationError
from klieg.input_schema import InputSchema

NODE_ID = re.compile(r"[a-z][a-z0-9_]{0,62}")
_REF = re.compile(r"\$([a-z][a-z0-9_]{0,62})((?:\.[^.\s]+)*)")
_OWNER = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_APP = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_APP_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_PATH = re.compile(r"[A-Za-z0-9_.~-]+(?:/[A-Za-z0-9_.~-]+)*/?")
MAX_NESTING = 100
"""How deep lists and objects may nest in a node's input and in the output template: templates
are walked recursively (``references``, ``resolve``, serialisation)."""


@dataclass(frozen=True)
class Reference:
    """A parsed reference; ``source`` is ``"input"`` or a node id.

    Example::

        parse_reference("$gen.images.0") == Reference("gen", ("images", "0"))
    """

    source: str
    path: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "$" + ".".join((self.source, *self.path))


def parse_reference(value: Any) -> Reference | None:
    """The reference a template value is, or None for anything else (literals, ``$$`` escapes).

    Example::

        parse_reference("$input.prompt")    # Reference("input", ("prompt",))
        parse_reference("costs $5")         # None
    """
    if not isinstance(value, str) or value.startswith("$$"):
        return None
    match = _REF.fullmatch(value)
    if match is None:
        return None
    return Reference(match.group(1), tuple(match.group(2).split(".")[1:]))


def references(template: Any) -> Iterator[Reference]:
    """Every reference inside a template (nested dicts and lists), in document order.

    Example::

        [str(r) for r in references({"a": ["$gen.x", "$$lit"], "b": "$input"})]
        # ['$gen.x', '$input']
    """
    if isinstance(template, dict | list):
        for value in template.values() if isinstance(template, dict) else template:
            yield from references(value)
    elif (ref := parse_reference(template)) is not None:
        yield ref


def _is_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8: JSON's ``\\ud800`` escapes decode to lone surrogates,
    which no document can be stored or sent with."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


_NOT_TEXT = "a string with a lone surrogate (not UTF-8 text)"


def _json_problem(value: Any, where: str, depth: int = 0) -> str | None:
    """Why ``value`` is not plain JSON (dict with str keys, list, str, number, bool, null) of at
    most ``MAX_NESTING`` levels, its strings UTF-8 text."""
    if isinstance(value, str):
        return None if _is_text(value) else f"{where}: {_NOT_TEXT}"
    if value is None or isinstance(value, bool | int | float):
        return None
    if isinstance(value, list | dict) and depth >= MAX_NESTING:
        return f"{where}: nested deeper than {MAX_NESTING} levels"
    if isinstance(value, list):
        problems = (_json_problem(v, f"{where}.{i}", depth + 1) for i, v in enumerate(value))
        return next((p for p in problems if p), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where}: key {key!r} is not a string"
            if not _is_text(key):
                return f"{where}: key {key!r} is {_NOT_TEXT}"
            if problem := _json_problem(item, f"{where}.{key}", depth + 1):
                return problem
        return None
    return f"{where}: a {type(value).__name__} is not a JSON value (quote it in YAML)"


class NodeSpec(BaseModel):
    """One node: the app endpoint it calls and its input template.

    Example::

        NodeSpec(app="local/imagetools@prod/grid", input={"images": "$gen.digits"}).target()
        # ('local', 'imagetools', 'prod', '/grid')
    """

    model_config = ConfigDict(extra="forbid")

    app: str
    input: dict[str, Any] = Field(default_factory=dict)

    def target(self) -> tuple[str, str, str | None, str]:
        """``(owner, app, alias or None, endpoint path)``; the path starts with ``/`` (``/`` for
        none). ``ValidationError`` unless ``app`` is ``owner/app[@alias][/path]``."""
        owner, sep, rest = self.app.partition("/")
        app_part, _, path = rest.partition("/")
        app, at, alias = app_part.partition("@")
        if (
            not sep
            or not _OWNER.fullmatch(owner)
            or not _APP.fullmatch(app)
            or (at and not _APP_REF.fullmatch(alias))
            or (path and not _PATH.fullmatch(path))
        ):
            raise ValidationError(
                f'app must be "owner/app[/path]" (with an optional "@alias" after app), '
                f"got {self.app!r}"
            )
        return owner, app, alias or None, "/" + path.strip("/")


class WorkflowDoc(BaseModel):
    """A validated workflow document; constructing one runs every check of ``load_workflow``.

    Example::

        doc = WorkflowDoc(nodes={"gen": NodeSpec(app="local/digits")}, output="$gen")
        doc.order(), doc.digest()[:8]
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    input: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    nodes: dict[str, NodeSpec]
    output: Any

    @model_validator(mode="after")
    def _checked(self) -> WorkflowDoc:
        _check(self)
        return self

    def deps(self, node_id: str) -> set[str]:
        """Ids of the nodes that ``node_id``'s input refers to."""
        refs = references(self.nodes[node_id].input)
        return {r.source for r in refs if r.source != "input"}

    def output_deps(self) -> set[str]:
        """Ids of the nodes the output template refers to."""
        return {r.source for r in references(self.output) if r.source != "input"}

    def order(self) -> list[list[str]]:
        """Topological layers: each layer's nodes depend only on earlier layers, so they can run
        in parallel. Deterministic: document order within a layer."""
        done: set[str] = set()
        layers: list[list[str]] = []
        remaining = list(self.nodes)
        while remaining:
            layer = [n for n in remaining if self.deps(n) <= done]
            if not layer:
                raise ValidationError(f"cycle among {', '.join(remaining)}")
            layers.append(layer)
            done.update(layer)
            remaining = [n for n in remaining if n not in done]
        return layers

    def input_properties(self) -> dict[str, Any] | None:
        """The input schema's ``properties``, or None when it declares none."""
        props = self.input.get("properties")
        return props if isinstance(props, dict) else None

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON-able form (every field present; node order kept)."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """sha256 hex of the canonical JSON (sorted keys, compact): equal for equal documents."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _storable_problem(value: Any, where: str) -> str | None:
    """Why ``value`` cannot be stored: lists and dicts nested more than ``MAX_NESTING`` deep, or
    a key or string that is not UTF-8 text. Walked without recursion."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str) and not _is_text(item):
            return f"{where}: {_NOT_TEXT}"
        if isinstance(item, list | dict):
            if depth >= MAX_NESTING:
                return f"{where}: nested deeper than {MAX_NESTING} levels"
            children = [*item, *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return None


def _check_input_schema(schema: dict[str, Any]) -> None:
    if problem := _storable_problem(schema, "input"):
        raise ValidationError(problem)
    if schema.get("type", "object") != "object":
        raise ValidationError('input: the input schema\'s type must be "object"')
    props = schema.get("properties", {})
    if not isinstance(props, dict) or not all(isinstance(p, dict) for p in props.values()):
        raise ValidationError("input: properties must map names to JSON schemas")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ValidationError("input: required must be a list of names")


def _check_ref(ref: Reference, who: str, doc: WorkflowDoc, self_id: str | None) -> None:
    declared = doc.input_properties()
    if ref.source == "input":
        if ref.path and declared is not None and ref.path[0] not in declared:
            raise ValidationError(f"{who} undeclared input {ref.path[0]!r} in {ref}")
    elif ref.source == self_id:
        raise ValidationError(f"{who} itself in {ref}")
    elif ref.source not in doc.nodes:
        raise ValidationError(f"{who} unknown node {ref.source!r} in {ref}")


def _find_cycle(doc: WorkflowDoc) -> list[str] | None:
    """A dependency cycle as ``[a, b, a]``, or None; a depth-first search in document order,
    with its own stack (a chain of nodes may be longer than Python's recursion limit)."""
    position = {node: i for i, node in enumerate(doc.nodes)}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in doc.nodes:
        if start in state:
            continue
        state[start] = 1
        path = [start]
        pending = [iter(sorted(doc.deps(start), key=position.__getitem__))]
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                state[path.pop()] = 2
                pending.pop()
            elif state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            elif dep not in state:
                state[dep] = 1
                path.append(dep)
                pending.append(iter(sorted(doc.deps(dep), key=position.__getitem__)))
    return None


def _check(doc: WorkflowDoc) -> None:
    if not doc.nodes:
        raise ValidationError("a workflow needs at least one node")
    if doc.name is not None and not _is_text(doc.name):
        raise ValidationError(f"name: {_NOT_TEXT}")
    _check_input_schema(doc.input)
    for node_id, node in doc.nodes.items():
        where = f"node {node_id!r}"
        if not NODE_ID.fullmatch(node_id) or node_id == "input":
            raise ValidationError(
                f"{where}: a node id must match {NODE_ID.pattern} and not be 'input'"
            )
        try:
            node.target()
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc.detail}") from None
        if problem := _json_problem(node.input, "input"):
            raise ValidationError(f"{where}: {problem}")
        for ref in references(node.input):
            _check_ref(ref, f"{where} refers to", doc, node_id)
    if problem := _json_problem(doc.output, "output"):
        raise ValidationError(problem)
    for ref in references(doc.output):
        _check_ref(ref, "output refers to", doc, None)
    if cycle := _find_cycle(doc):
        raise ValidationError("cycle: " + " -> ".join(cycle))


def _pydantic_detail(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if len(loc) >= 2 and loc[0] == "nodes":
            where = f"node {loc[1]!r}" + (f": {'.'.join(loc[2:])}" if loc[2:] else "")
        else:
            where = ".".join(loc) or "document"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def load_workflow(source: str | bytes | dict[str, Any] | Path | WorkflowDoc) -> WorkflowDoc:
    """Parse and validate a workflow document: a Path is read (``.json``, else YAML), str or
    bytes are parsed as YAML (a superset of JSON), a dict is used as is.

    ``ValidationError`` (422) for unparsable text and for every invalid document, naming the node
    at fault (``node 'strip' refers to unknown node 'gn' in $gn.digits``, ``cycle: a -> b -> a``).

    Example::

        doc = load_workflow(Path("movie.yaml"))
        doc = load_workflow('{"nodes": {"a": {"app": "local/echo"}}, "output": "$a"}')
    """
    if isinstance(source, WorkflowDoc):
        return source
    try:
        if isinstance(source, Path):
            text = source.read_text()
            data = json.loads(text) if source.suffix == ".json" else yaml.safe_load(text)
        elif isinstance(source, str | bytes):
            data = yaml.safe_load(source)
        else:
            data = source
    except (ValueError, yaml.YAMLError) as exc:
        raise ValidationError(f"the workflow document does not parse: {exc}") from None
    except RecursionError:
        raise ValidationError("the workflow document is nested too deeply to parse") from None
    if not isinstance(data, dict):
        raise ValidationError("a workflow document must be a mapping with 'nodes' and 'output'")
    try:
        return WorkflowDoc.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValidationError(_pydantic_detail(exc)) from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _lookup(ref: Reference, scope: dict[str, Any]) -> Any:
    if ref.source not in scope:
        raise ValidationError(f"{ref}: no value for {ref.source!r}")
    value = scope[ref.source]
    for seg in ref.path:
        if isinstance(value, dict):
            if seg not in value:
                keys = ", ".join(list(value)[:10])
                raise ValidationError(f"{ref}: no key {seg!r} (keys: {keys or 'none'})")
            value = value[seg]
        elif isinstance(value, list):
            if not (seg.isascii() and seg.isdigit()):
                raise ValidationError(f"{ref}: {seg!r} is not an index into an array")
            digits = seg.lstrip("0") or "0"
            if len(digits) > len(str(len(value))) or int(digits) >= len(value):
                raise ValidationError(
                    f"{ref}: index {seg} out of range (the array has {len(value)} items)"
                )
            value = value[int(digits)]
        else:
            raise ValidationError(f"{ref}: cannot look up {seg!r} in a {_json_type(value)}")
    return value


def resolve(template: Any, scope: dict[str, Any]) -> Any:
    """A copy of ``template`` with every reference replaced by its value in ``scope`` (``"input"``
    and one key per completed node). ``$$x`` becomes ``$x``. Never mutates either argument.

    ``ValidationError`` naming the reference when a value is missing
    (``$gen.images.3: index 3 out of range ...``).

    Example::

        resolve({"img": "$gen.images.0", "note": "$$5"}, {"gen": {"images": ["a.png"]}})
        # {'img': 'a.png', 'note': '$5'}
    """
    if isinstance(template, str):
        if template.startswith("$$"):
            return template[1:]
        ref = parse_reference(template)
        return template if ref is None else copy.deepcopy(_lookup(ref, scope))
    if isinstance(template, dict):
        return {k: resolve(v, scope) for k, v in template.items()}
    if isinstance(template, list):
        return [resolve(v, scope) for v in template]
    return template


def validate_input(doc: WorkflowDoc, value: Any, *, max_data_url: int | None = None) -> None:
    """Check a workflow input against the document's input schema, with JSON Schema's types as
    written (``klieg.input_schema`` in strict mode): an object, its ``required`` keys present,
    declared properties of the declared ``type`` (nested schemas too), media URLs of allowed
    schemes (``data:`` URLs at most ``max_data_url`` characters). ``ValidationError`` with a
    pydantic-shaped detail list otherwise.

    Example::

        validate_input(doc, {})    # ValidationError([{"loc": ["body", "digits"], ...}])
    """
    InputSchema({**doc.input, "type": "object"}, strict=True).check(
        value, max_data_url=max_data_url
    )
