"""What each platform route takes and answers, declared once on its handler.

``@accepts(Model)`` reads the request's JSON body (size-limited), validates it with ``Model`` (a
``Body``: strict types, finite numbers, unknown fields ignored) and hands the handler the model;
anything else is a 422 ``ValidationError`` naming the fields, in pydantic's shape
``[{"loc": ["body", field...], "msg", "type"}]``. ``@answers(Reply, 200, ...)`` names the success
answer's model per status (or a media type, for a stream, a page or a file); ``@takes(schema)``
describes a body the handler reads itself (an app's input; an upload). ``openapi.py`` builds
``GET /openapi.json`` from these declarations (and ``@query(name=schema)``, the query parameters
a handler reads), so the document and the validation are one.

Path parameters are checked before this, on every route (``auth.Authenticate``): one holding
a control character is a 400.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response

from klieg.exceptions import ValidationError
from klieg_platform.gateway.intake import read_json_object

Handler = Callable[[Request], Awaitable[Response]]
SMALL_BODY = 64 * 1024
"""The size limit of a management body unless ``accepts`` names another."""
ATTRIBUTE = "__klieg_contract__"


class Body(BaseModel):
    """A route's JSON body: strict types (no ``"5"`` for 5, no 1 for true), finite numbers,
    unknown fields ignored."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


@dataclass(frozen=True)
class Contract:
    """One handler's declarations. ``body``: the model ``accepts`` validates with; ``schema``:
        the JSON schema of a body the handler reads itself, under ``media``; ``replies``: status ->
        the answer's model, or its media type where it is no JSON document; ``queries``: name -> the
    JSON schema of each query parameter it reads."""

    body: type[Body] | None = None
    schema: Mapping[str, Any] | None = None
    media: str = "application/json"
    about: str = ""
    replies: Mapping[int, type[BaseModel] | str] = field(default_factory=dict)
    queries: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def contract_of(handler: Callable[..., Any]) -> Contract | None:
    """What ``handler`` declared; None where it declared nothing."""
    found: Contract | None = getattr(handler, ATTRIBUTE, None)
    return found


def _declare(handler: Any, **changes: Any) -> None:
    setattr(handler, ATTRIBUTE, replace(contract_of(handler) or Contract(), **changes))


B = TypeVar("B", bound=Body)
H = TypeVar("H", bound=Callable[..., Any])


def _errors(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


async def read_model(request: Request, model: type[B], limit: int = SMALL_BODY) -> B:
    """The request's JSON object body (``{}`` when empty) as ``model``; 413 past ``limit``,
    422 naming the fields otherwise."""
    data = await read_json_object(request, limit)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValidationError(_errors(exc)) from None


def accepts(
    model: type[B], *, limit: int = SMALL_BODY
) -> Callable[[Callable[[Request, B], Awaitable[Response]]], Handler]:
    """The handler takes its body as ``model`` (read by ``read_model``)."""

    def wrap(handler: Callable[[Request, B], Awaitable[Response]]) -> Handler:
        @functools.wraps(handler)
        async def read_then_handle(request: Request) -> Response:
            return await handler(request, await read_model(request, model, limit))

        _declare(read_then_handle, body=model)
        return read_then_handle

    return wrap


def takes(
    schema: Mapping[str, Any], about: str, media: str = "application/json"
) -> Callable[[H], H]:
    """The handler reads a body of ``schema`` (under ``media``) itself; ``about`` says what it
    is."""

    def wrap(handler: H) -> H:
        _declare(handler, schema=schema, about=about, media=media)
        return handler

    return wrap


def query(**schemas: Mapping[str, Any]) -> Callable[[H], H]:
    """The handler reads these query parameters (name -> JSON schema of its value)."""

    def wrap(handler: H) -> H:
        found = contract_of(handler) or Contract()
        _declare(handler, queries={**found.queries, **schemas})
        return handler

    return wrap


def answers(reply: type[BaseModel] | str, *statuses: int) -> Callable[[H], H]:
    """The handler answers ``statuses`` (default 200) with a ``reply`` document, or, where
    ``reply`` is a media type, with that (a stream, a page, a file)."""

    def wrap(handler: H) -> H:
        found = contract_of(handler) or Contract()
        _declare(handler, replies={**found.replies, **dict.fromkeys(statuses or (200,), reply)})
        return handler

    return wrap
