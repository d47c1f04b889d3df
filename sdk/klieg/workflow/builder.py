"""Building a workflow document in Python: ``Workflow`` and the ``Ref`` values its nodes return.

Example::

    wf = Workflow("w", input={"digits": "string"})
    gen = wf.node("gen", "local/digits", {"digits": wf.input.digits})
    wf.output({"image": gen.images[0]})
    wf.build()                                    # a WorkflowDoc, validated like load_workflow
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from klieg.exceptions import ValidationError
from klieg.workflow.document import NODE_ID, WorkflowDoc, load_workflow

_SEGMENT = re.compile(r"[^.\s]+")


class Ref:
    """A reference in a workflow being built: attribute and item access extend its path.

    Example::

        wf = Workflow("w")
        gen = wf.node("gen", "local/digits", {"digits": wf.input.digits})
        str(gen.images[0]), str(gen["path"])      # ('$gen.images.0', '$gen.path')
    """

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def __getattr__(self, name: str) -> Ref:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, key: str | int) -> Ref:
        segment = str(key)
        if isinstance(key, bool) or not _SEGMENT.fullmatch(segment) or segment.startswith("-"):
            raise ValidationError(f"invalid path segment {key!r} after {self._text}")
        return Ref(f"{self._text}.{segment}")

    def __iter__(self) -> Iterator[Any]:
        raise TypeError(f"{self._text} is a reference, not a list")

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"Ref({self._text!r})"


def _plain(value: Any) -> Any:
    """A builder template as document JSON: refs become strings, tuples lists."""
    if isinstance(value, Ref):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _input_schema(spec: dict[str, Any] | None) -> dict[str, Any]:
    """A full object schema (kept as is) or the shorthand ``{name: json type or schema}``, whose
    names are all required."""
    if spec is None:
        return {"type": "object"}
    if spec.get("type") == "object" or "properties" in spec:
        return dict(spec)
    props = {k: {"type": v} if isinstance(v, str) else dict(v) for k, v in spec.items()}
    return {"type": "object", "properties": props, "required": list(props)}


class Workflow:
    """Build a workflow document in Python; ``build()`` validates it like ``load_workflow``.

    ``input`` is a full JSON schema of an object, or the shorthand ``{name: "string"}``
    (name -> JSON type or property schema; every name required).

    Example::

        wf = Workflow("digits-movie", input={"digits": "string"})
        gen = wf.node("gen", "local/digits", {"digits": wf.input.digits, "seed": 0})
        strip = wf.node("strip", "local/imagetools/grid", {"images": gen.digits, "columns": 8})
        movie = wf.node("movie", "local/video/frames", {"frames": [gen.digits[0], strip.image]})
        wf.output({"image": strip.image, "video": movie.video})
        doc = wf.build()
        print(wf.to_yaml())
    """

    def __init__(self, name: str | None = None, input: dict[str, Any] | None = None) -> None:
        self.name = name
        self.schema = _input_schema(input)
        self.input = Ref("$input")
        self._nodes: dict[str, dict[str, Any]] = {}
        self._output: Any = None
        self._has_output = False

    def node(self, node_id: str, app: str, input: dict[str, Any] | None = None) -> Ref:
        """Add a node calling ``app`` (``owner/app[@alias][/path]``); returns its output ref."""
        if node_id in self._nodes:
            raise ValidationError(f"node {node_id!r} is defined twice")
        if not NODE_ID.fullmatch(node_id) or node_id == "input":
            raise ValidationError(
                f"node {node_id!r}: a node id must match {NODE_ID.pattern} and not be 'input'"
            )
        self._nodes[node_id] = {"app": app, "input": _plain(input or {})}
        return Ref(f"${node_id}")

    def output(self, template: Any) -> None:
        """Set the workflow's output template."""
        self._output = _plain(template)
        self._has_output = True

    def build(self) -> WorkflowDoc:
        """The validated document; ``ValidationError`` as for ``load_workflow``."""
        if not self._has_output:
            raise ValidationError("the workflow has no output: call output(...) first")
        return load_workflow(
            {"name": self.name, "input": self.schema, "nodes": self._nodes, "output": self._output}
        )

    def to_dict(self) -> dict[str, Any]:
        """The validated document as a JSON-able dict."""
        return self.build().to_dict()

    def to_json(self, indent: int | None = 2) -> str:
        """The validated document as JSON."""
        return json.dumps(self.to_dict(), indent=indent)

    def to_yaml(self) -> str:
        """The validated document as YAML (node order kept)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
