"""Request bodies checked against an input's JSON schema, before anything runs.

An endpoint's ``input_schema`` is its pydantic model's JSON schema; a workflow's is the one its
document declares. :class:`InputSchema` walks a parsed body against such a schema and reports
what is certainly wrong, in pydantic's shape: ``[{"loc": ["body", *path], "msg", "type"}]``.

Guarantees:

- Lax (the default, for endpoint models) accepts every value pydantic's lax mode converts:
  ``"5"``, ``5.0`` and ``true`` for an integer, ``"yes"`` for a boolean, a number for a
  date-time. The runner still validates with the model itself; this check only refuses early
  what the model would refuse (missing fields, wrong types, values out of range, extra fields
  a model forbids). Strict (``strict=True``, for workflow documents) applies JSON Schema's types
  as written: ``true`` is no integer, ``"5"`` no number.
- Media URLs are checked too: a string that is a URL to fetch (the ``url`` of a ``klieg.File``,
  ``Image``, ``Video`` or ``Audio``, any field named ``url`` or ``*_url``, any ``format: uri``)
  may only use a scheme of :data:`klieg.media.INPUT_URL_SCHEMES`; with ``max_data_url``, a
  ``data:`` URL may be at most that many characters long.
- Keywords it does not know (``pattern``, ``format`` other than those above, ...) accept
  anything, and so does a ``$ref`` it cannot resolve.

Example::

    schema = InputSchema(In.model_json_schema())
    schema.errors({"text": 5})   # [{"loc": ["body", "text"], "msg": "...", "type": "string_type"}]
    schema.check({"image": {"url": "file:///etc/passwd"}})   # ValidationError naming body.image.url
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from klieg.exceptions import ValidationError
from klieg.media import INPUT_URL_SCHEMES

Error = dict[str, Any]
Loc = tuple[str | int, ...]
Name = str | int | None
"""The name of the field a value is in (its last ``loc`` segment when that is a key)."""

_TYPE_CODES = {
    "string": "string_type",
    "integer": "int_type",
    "number": "float_type",
    "boolean": "bool_type",
    "array": "list_type",
    "object": "dict_type",
    "null": "none_required",
}
_BOOL_WORDS = {"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"}
_TIME_FORMATS = {"date-time", "date", "time", "duration"}
"""String formats pydantic also reads from a number (unix time, seconds) in lax mode."""
_URL_FORMATS = {"uri", "iri", "uri-reference", "iri-reference"}
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*):")
_BOUNDS = (
    ("minimum", lambda v, b: v >= b, "greater_than_equal", "greater than or equal to"),
    ("exclusiveMinimum", lambda v, b: v > b, "greater_than", "greater than"),
    ("maximum", lambda v, b: v <= b, "less_than_equal", "less than or equal to"),
    ("exclusiveMaximum", lambda v, b: v < b, "less_than", "less than"),
)


def _error(loc: Loc, msg: str, kind: str) -> Error:
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


def is_url_field(name: Name, schema: Mapping[str, Any]) -> bool:
    """Whether a string at this place is a URL the endpoint fetches: a ``format: uri`` string,
    or a field named ``url``, ``*_url`` or ``*Url`` (the ``url`` of every ``klieg.File``)."""
    if schema.get("format") in _URL_FORMATS:
        return True
    return isinstance(name, str) and (name == "url" or name.endswith(("_url", "Url")))


def url_problem(url: str, max_data_url: int | None = None) -> tuple[str, str] | None:
    """Why an input URL is refused, as (message, pydantic-style type); None when it is allowed:
    empty, without a scheme, or with one of ``INPUT_URL_SCHEMES`` (a ``data:`` URL no longer than
    ``max_data_url`` characters when that is set)."""
    match = _SCHEME.match(url)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if scheme not in INPUT_URL_SCHEMES:
        allowed = ", ".join(INPUT_URL_SCHEMES)
        return f"URL scheme {scheme!r} is not allowed; use one of {allowed}", "url_scheme"
    if scheme == "data" and max_data_url is not None and len(url) > max_data_url:
        msg = f"data: URL of {len(url)} characters exceeds the limit of {max_data_url}"
        return msg, "url_too_long"
    return None


class InputSchema:
    """A JSON schema to check parsed request bodies against (see the module docstring).

    Immutable once built and cheap to share: build one per endpoint of a revision and reuse it.
    """

    def __init__(self, schema: Mapping[str, Any], *, strict: bool = False) -> None:
        self.schema = schema
        self.strict = strict
        defs = schema.get("$defs") or schema.get("definitions") or {}
        self._defs: Mapping[str, Any] = defs if isinstance(defs, Mapping) else {}

    def errors(self, value: Any, *, max_data_url: int | None = None) -> list[Error]:
        """What is wrong with ``value`` (a parsed JSON body); ``[]`` when nothing certainly is."""
        walk = _Walk(self, max_data_url)
        try:
            walk.node(self.schema, value, (), None)
        except RecursionError:  # a body nested deeper than the check goes: the runner decides
            return []
        return walk.found

    def check(self, value: Any, *, max_data_url: int | None = None) -> None:
        """``ValidationError`` (422) listing what ``errors`` finds, if anything."""
        found = self.errors(value, max_data_url=max_data_url)
        if found:
            raise ValidationError(found)

    def resolve(self, ref: str) -> Mapping[str, Any] | None:
        """The schema a local ``$ref`` (``#/$defs/Name``) points at; None for any other."""
        for prefix in ("#/$defs/", "#/definitions/"):
            if ref.startswith(prefix):
                found = self._defs.get(ref.removeprefix(prefix))
                return found if isinstance(found, Mapping) else None
        return None


class _Walk:
    """One check of one value: errors are collected in ``found``, in document order."""

    def __init__(self, schema: InputSchema, max_data_url: int | None) -> None:
        self.schema = schema
        self.strict = schema.strict
        self.max_data_url = max_data_url
        self.found: list[Error] = []

    def node(self, schema: Any, value: Any, loc: Loc, name: Name) -> None:
        if not isinstance(schema, Mapping):
            return
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target = self.schema.resolve(ref)
            if target is None:
                return
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        for part in schema.get("allOf") or ():
            self.node(part, value, loc, name)
        branches = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(branches, list) and branches:
            self.union(branches, value, loc, name)
        self.typed(schema, value, loc, name)

    def union(self, branches: list[Any], value: Any, loc: Loc, name: Name) -> None:
        """Accept when one branch accepts; else report the branch the value fits best (the one
        whose type it has, with the fewest errors), or one type error naming every type."""
        outcomes: list[list[Error]] = []
        for branch in branches:
            trial = _Walk(self.schema, self.max_data_url)
            trial.node(branch, value, loc, name)
            if not trial.found:
                return
            outcomes.append(trial.found)
        near = [found for found in outcomes if not _only_type_error(found, loc)]
        if near:
            best: list[Error] = min(near, key=len)
            self.found.extend(best)
            return
        types = [t for branch in branches for t in _types_of(branch, self.schema)]
        self.found.append(_type_error(loc, list(dict.fromkeys(types)) or ["a valid value"]))

    def typed(self, schema: Mapping[str, Any], value: Any, loc: Loc, name: Name) -> None:
        """The checks of one schema object: type, enum/const, then by the value's kind."""
        wants = _wanted_types(schema)
        if wants:
            kinds = [w for w in wants if self.fits(w, value, schema)]
            if not kinds:
                self.found.append(_type_error(loc, wants))
                return
            value = _coerced(kinds[0], value) if not self.strict else value
        if "enum" in schema or "const" in schema:
            allowed = schema["enum"] if "enum" in schema else [schema["const"]]
            if isinstance(allowed, list) and not _member(value, allowed):
                shown = " or ".join(repr(a) for a in allowed[:10])
                self.found.append(_error(loc, f"Input should be {shown}", "enum"))
                return
        if isinstance(value, dict) and (not wants or "object" in wants or "properties" in schema):
            self.object(schema, value, loc)
        elif isinstance(value, list):
            self.array(schema, value, loc)
        elif isinstance(value, str):
            self.string(schema, value, loc, name)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self.number(schema, value, loc)

    def fits(self, want: str, value: Any, schema: Mapping[str, Any]) -> bool:
        """Whether ``value`` is of JSON type ``want`` (strict) or converts to it (lax)."""
        if self.strict:
            return _strict_fit(want, value)
        if want == "string":
            if isinstance(value, str):
                return True
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            return numeric and schema.get("format") in _TIME_FORMATS
        if want == "integer":
            number = _as_number(value)
            if isinstance(number, float):
                return math.isfinite(number) and number.is_integer()
            return number is not None
        if want == "number":
            return _as_number(value) is not None
        if want == "boolean":
            if isinstance(value, bool):
                return True
            if isinstance(value, int | float):
                return value in (0, 1)
            return isinstance(value, str) and value.strip().lower() in _BOOL_WORDS
        return _strict_fit(want, value)

    def object(self, schema: Mapping[str, Any], value: dict[str, Any], loc: Loc) -> None:
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        for key in schema.get("required") or ():
            if isinstance(key, str) and key not in value:
                self.found.append(_error((*loc, key), "Field required", "missing"))
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                self.node(props[key], item, (*loc, key), key)
            elif extra is False:
                self.found.append(
                    _error((*loc, key), "Extra inputs are not permitted", "extra_forbidden")
                )
            elif isinstance(extra, Mapping):
                self.node(extra, item, (*loc, key), key)

    def array(self, schema: Mapping[str, Any], value: list[Any], loc: Loc) -> None:
        self.length(schema, len(value), loc, "List", "item", "too")
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items")
        for i, item in enumerate(value):
            if i < len(prefix):
                self.node(prefix[i], item, (*loc, i), None)
            elif isinstance(items, Mapping):
                self.node(items, item, (*loc, i), None)

    def string(self, schema: Mapping[str, Any], value: str, loc: Loc, name: Name) -> None:
        if not self.length(schema, len(value), loc, "String", "character", "string_too"):
            return
        if value and is_url_field(name, schema):
            problem = url_problem(value, self.max_data_url)
            if problem is not None:
                self.found.append(_error(loc, *problem))

    def number(self, schema: Mapping[str, Any], value: float, loc: Loc) -> None:
        for keyword, ok, kind, words in _BOUNDS:
            bound = schema.get(keyword)
            bounded = isinstance(bound, int | float) and not isinstance(bound, bool)
            if bounded and not math.isnan(value) and not ok(value, bound):
                self.found.append(_error(loc, f"Input should be {words} {bound}", kind))
                return

    def length(
        self, schema: Mapping[str, Any], size: int, loc: Loc, what: str, unit: str, code: str
    ) -> bool:
        """Check ``minLength``/``maxLength`` (strings) or ``minItems``/``maxItems`` (lists)."""
        low, high = ("minLength", "maxLength") if what == "String" else ("minItems", "maxItems")
        least, most = schema.get(low), schema.get(high)
        if isinstance(least, int) and size < least:
            msg = f"{what} should have at least {least} {unit}{'s' if least != 1 else ''}"
            self.found.append(_error(loc, msg, f"{code}_short"))
            return False
        if isinstance(most, int) and size > most:
            msg = f"{what} should have at most {most} {unit}{'s' if most != 1 else ''}"
            self.found.append(_error(loc, msg, f"{code}_long"))
            return False
        return True


def _wanted_types(schema: Mapping[str, Any]) -> list[str]:
    want = schema.get("type")
    if isinstance(want, str):
        return [want] if want in _TYPE_CODES else []
    if isinstance(want, list):
        known = [w for w in want if isinstance(w, str) and w in _TYPE_CODES]
        return known if len(known) == len(want) else []
    return []


def _types_of(schema: Any, owner: InputSchema) -> list[str]:
    if not isinstance(schema, Mapping):
        return []
    ref = schema.get("$ref")
    if isinstance(ref, str):
        schema = owner.resolve(ref) or {}
    return _wanted_types(schema) or (["object"] if "properties" in schema else [])


def _type_error(loc: Loc, wants: list[str]) -> Error:
    kind = _TYPE_CODES.get(wants[0], "type_error")
    return _error(loc, f"Input should be of type {' or '.join(wants)}", kind)


def _only_type_error(found: list[Error], loc: Loc) -> bool:
    """Whether a branch failed only because the value is not of its type at all."""
    here = ["body", *loc]
    return len(found) == 1 and found[0]["loc"] == here and found[0]["type"] in _TYPE_CODES.values()


def _strict_fit(want: str, value: Any) -> bool:
    if want == "null":
        return value is None
    if isinstance(value, bool):
        return want == "boolean"
    if want == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if want == "number":
        return isinstance(value, int | float)
    python = {"string": str, "boolean": bool, "array": list, "object": dict}
    return isinstance(value, python[want])


def _as_number(value: Any) -> int | float | None:
    """``value`` as pydantic's lax mode reads a number: a number, a boolean, or a numeric
    string (``" 5 "``, ``"1_000"``, ``"1e3"``); None otherwise."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value.strip())
            except ValueError:
                continue
    return None


def _coerced(kind: str, value: Any) -> Any:
    """``value`` converted to ``kind`` as lax validation would, for the checks that follow."""
    if kind not in ("integer", "number"):
        return value
    number = _as_number(value)
    if kind == "integer" and isinstance(number, float):
        return int(number)
    return number


def _member(value: Any, allowed: list[Any]) -> bool:
    """``value`` is one of ``allowed`` (``1`` and ``True`` are not the same member)."""
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)
