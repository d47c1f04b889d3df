"""From an HTTP request to a queued request, and from an outcome back to a response.

``intake`` authenticates, resolves ``{owner}/{app}[@ref]/{path}`` to a revision and endpoint,
reads the body under the size limit (checking it is JSON), checks it against the endpoint's
input schema (``klieg.input_schema``: a 422 naming the field, media URLs of allowed schemes
only) so that nothing invalid is queued, and builds the ``NewRequest``:
``X-Fal-Request-Timeout`` becomes a deadline, ``X-Fal-Queue-Priority`` (``normal`` or ``low``)
the queue priority, ``X-Fal-Runner-Hint`` the runner hint, ``?fal_webhook=`` the webhook, and
a body larger than ``inline_payload_bytes`` goes to the blob store instead of Redis. A header
with a bad value is a 400 naming it.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from klieg.exceptions import (
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    QueueFullError,
    ValidationError,
)
from klieg.types import EndpointSpec, hint_problem, normalize_path
from klieg_platform.broker import NewRequest, Outcome
from klieg_platform.broker.jobs import NORMAL, PRIORITIES
from klieg_platform.disclosure import error_view
from klieg_platform.gateway import auth
from klieg_platform.gateway.errors import error_response
from klieg_platform.gateway.state import GatewayState, gateway
from klieg_platform.registry import CONTROL
from klieg_platform.scheduler import retry_after_s
from klieg_platform.storage import offload_payload
from klieg_platform.webhooks import refused_target

TIMEOUT_HEADER = "x-fal-request-timeout"
PRIORITY_HEADER = "x-fal-queue-priority"
HINT_HEADER = "x-fal-runner-hint"
MAX_REQUEST_TIMEOUT_S = 7 * 24 * 3600.0
"""The longest ``X-Fal-Request-Timeout`` taken: a week (a longer one is refused, 400)."""
DEFAULT_SERVICE_S = 10.0
"""Assumed service time of an app that has not been measured yet."""


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body; PayloadTooLargeError as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_input(request: Request, limit: int) -> tuple[bytes, Any]:
    """The request body, size-limited, and its JSON value (``{}`` for an empty body, as the
    runner reads it); ``ValidationError`` when it is not JSON."""
    body = await read_limited(request, limit)
    if not body.strip():
        return body, {}
    try:
        return body, json.loads(body)
    except (ValueError, RecursionError) as exc:
        msg = f"invalid JSON: {exc}" if isinstance(exc, ValueError) else "JSON nested too deeply"
        raise ValidationError([{"loc": ["body"], "msg": msg, "type": "json_invalid"}]) from exc


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, size-limited and checked to be JSON (an empty body is allowed)."""
    return (await read_input(request, limit))[0]


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The request body parsed as a JSON object (``{}`` for an empty body), size-limited as
    ``read_body``; ``ValidationError`` for invalid JSON or any other JSON value."""
    _, data = await read_input(request, limit)
    if not isinstance(data, dict):
        raise ValidationError([{"loc": ["body"], "msg": "expected a JSON object", "type": "type"}])
    return data


def seconds(raw: str, name: str, *, most: float | None = None, zero: bool = False) -> float:
    """``raw`` as a number of seconds: positive (or 0 with ``zero``) and at most ``most``;
    ``InvalidRequestError`` naming ``name`` otherwise."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a number of seconds, got {raw!r}")
    if value < 0 or (value == 0 and not zero):
        raise InvalidRequestError(f"{name} must be {'0 or more' if zero else 'positive'}")
    if most is not None and value > most:
        raise InvalidRequestError(f"{name} must be at most {most:g} seconds")
    return value


def deadline_ms(request: Request) -> int:
    """The deadline (unix ms) ``X-Fal-Request-Timeout`` asks for; 0 when none."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return 0
    return int((time.time() + seconds(raw, TIMEOUT_HEADER, most=MAX_REQUEST_TIMEOUT_S)) * 1000)


def _is_http_url(url: str) -> bool:
    """An http(s) URL with a host, a port in range if it names one, no control character."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port out of range or no number
    except ValueError:  # and for an unclosed [IPv6] host
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not CONTROL.search(url)


def priority(request: Request) -> str:
    """The queue priority ``X-Fal-Queue-Priority`` asks for (``normal`` without it);
    ``InvalidRequestError`` naming the header for any value but ``normal`` or ``low``."""
    raw = request.headers.get(PRIORITY_HEADER)
    if raw is None:
        return NORMAL
    if raw not in PRIORITIES:
        allowed = " or ".join(repr(p) for p in PRIORITIES)
        raise InvalidRequestError(f"X-Fal-Queue-Priority must be {allowed}, got {raw!r}")
    return raw


def runner_hint(request: Request) -> str:
    """The runner hint ``X-Fal-Runner-Hint`` names (empty without it, or empty);
    ``InvalidRequestError`` naming the header when it is no hint (``klieg.types.hint_problem``)."""
    raw = request.headers.get(HINT_HEADER, "")
    if raw and (problem := hint_problem(raw)) is not None:
        raise InvalidRequestError(f"X-Fal-Runner-Hint: {problem}")
    return raw


async def webhook_url(request: Request, gw: GatewayState) -> str:
    """The ``?fal_webhook=`` URL, checked to be http(s) and, where the gateway delivers to
    public receivers only (``webhook_allow_private`` off), to have only public addresses; ""
    when none."""
    url = request.query_params.get("fal_webhook", "")
    if not url:
        return ""
    if not _is_http_url(url):
        raise InvalidRequestError(f"fal_webhook must be an http(s) URL, got {url!r}")
    if not gw.settings.webhook_allow_private:
        refused = await refused_target(url)
        if refused is not None:
            raise InvalidRequestError(
                f"fal_webhook {url!r} is refused: {refused}; this gateway delivers webhooks to "
                "public addresses only"
            )
    return url


@dataclass(frozen=True)
class Intake:
    gw: GatewayState
    new: NewRequest
    endpoint: EndpointSpec


async def intake(request: Request, *, allow_stream: bool, reply_to: str = "") -> Intake:
    """Validate and build the request to enqueue. With ``allow_stream``, a path ending in
    ``/stream`` (or ``Accept: text/event-stream``) on a generator endpoint asks for SSE.
    ``reply_to``: the reply channel of a caller waiting for the outcome (not for SSE)."""
    gw = gateway(request)
    tenant = auth.caller(request)
    owner = request.path_params["owner"]
    resolved = await gw.resolve(tenant, owner, request.path_params["app"])
    path = normalize_path(request.path_params.get("path", ""))
    route = resolved.spec.route(path)
    stream = False
    if allow_stream:
        if route is None and path.endswith("/stream"):
            route = resolved.spec.route(path.removesuffix("stream"))
            if route is not None and not route[1].streaming:
                route = None
            stream = route is not None
        elif route is not None and route[1].streaming:
            accept = request.headers.get("accept", "")
            stream = path.endswith("/stream") or "text/event-stream" in accept
    if route is None:
        raise NotFoundError(f"app {owner}/{resolved.spec.name} has no endpoint at '{path}'")
    fn, ep = route
    queue_priority, hint = priority(request), runner_hint(request)
    body, value = await read_input(request, gw.settings.max_body_bytes)
    schema = resolved.input_schema(ep)
    if schema is not None:
        schema.check(value, max_data_url=gw.settings.max_body_bytes)
    rid = uuid.uuid4().hex
    body, ref = await offload_payload(gw.store, rid, body, gw.settings.inline_payload_bytes)
    new = NewRequest(
        id=rid,
        owner=owner,
        tenant=tenant.id,
        app=resolved.spec.name,
        revision=resolved.revision.id,
        function=fn.name,
        endpoint=ep.path,
        pool=fn.pool,
        payload=body,
        payload_ref=ref,
        timeout_s=fn.request_timeout,
        deadline_ms=deadline_ms(request),
        webhook=await webhook_url(request, gw),
        stream=stream,
        reply_to="" if stream else reply_to,
        tier=gw.tier_of(tenant),
        tenant_cap=tenant.max_inflight,
        app_cap=resolved.app.max_inflight,
        gpus=fn.num_gpus,
        priority=queue_priority,
        hint=hint,
    )
    return Intake(gw, new, ep)


async def enqueue(gw: GatewayState, new: NewRequest, *, position: bool = False) -> int | None:
    """Queue ``new`` (its queue position, with ``position``); a full tier queue answers 429 with
    a Retry-After from measured times."""
    try:
        return await gw.broker.queue.enqueue(new, position=position)
    except QueueFullError as exc:
        capacity, _ = await gw.broker.workers.capacity(new.pool)
        mean = await gw.broker.stats.mean_time("service", new.app_key) or DEFAULT_SERVICE_S
        exc.retry_after_s = retry_after_s(exc.queued, mean, capacity)
        raise


async def result_response(
    gw: GatewayState, request_id: str, outcome: Outcome, *, full: bool
) -> Response:
    """The request's result, or its error (seen through ``disclosure.error_view`` unless
    ``full``: the caller owns the app or may see its logs)."""
    headers = {"x-klieg-request-id": request_id, "x-fal-request-id": request_id}
    if outcome.ok:
        body = outcome.result
        if outcome.result_ref:
            body = await asyncio.to_thread(gw.store.get, outcome.result_ref)
        return Response(body, 200, media_type="application/json", headers=headers)
    err = outcome.error or {"detail": "request failed", "error_type": "KliegError"}
    if not full:
        err = error_view(err)
    return error_response(
        outcome.http_status, err.get("detail"), str(err.get("error_type")), headers=headers
    )
