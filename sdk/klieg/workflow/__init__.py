"""Workflow documents: nodes that call app endpoints, wired together by ``$`` references.

Each node calls ``owner/app[@alias][/path]`` with an input template. A string that is exactly
``$input``, ``$input.<path>``, ``$<node>`` or ``$<node>.<path>`` refers to the workflow input or to
a node's output (path segments are separated by ``.``; a digit segment indexes a list). A string
starting with ``$$`` is a literal with one ``$`` removed; any other string is literal. A node runs
after the nodes it refers to; ``output`` is a template over the input and the node outputs.

The document model, loader, validation and ``resolve`` live in ``klieg.workflow.document``; the
Python builder ``Workflow`` in ``klieg.workflow.builder``. Both are re-exported here.

Example::

    doc = load_workflow('''
    input: {type: object, properties: {digits: {type: string}}, required: [digits]}
    nodes:
      gen: {app: local/digits, input: {digits: $input.digits}}
      strip: {app: local/imagetools/grid, input: {images: $gen.digits, columns: 8}}
    output: {image: $strip.image}
    ''')
    doc.order()                                   # [['gen'], ['strip']]
"""

from __future__ import annotations

from klieg.workflow.builder import Ref, Workflow
from klieg.workflow.document import (
    NODE_ID,
    NodeSpec,
    Reference,
    WorkflowDoc,
    load_workflow,
    parse_reference,
    references,
    resolve,
    validate_input,
)

__all__ = [
    "NODE_ID",
    "NodeSpec",
    "Ref",
    "Reference",
    "Workflow",
    "WorkflowDoc",
    "load_workflow",
    "parse_reference",
    "references",
    "resolve",
    "validate_input",
]
