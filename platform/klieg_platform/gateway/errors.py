"""Every error leaves the gateway as ``{"detail", "error_type"}`` with the class's HTTP status.

The status of each error class is defined once, on the class (``klieg.exceptions``); this module
turns exceptions into responses and is the only place that does.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from klieg.exceptions import KliegError, QueueFullError, RateLimitedError, UnavailableError
from klieg_platform.broker import UNAVAILABLE
from klieg_platform.storage import StorageError

log = logging.getLogger("klieg.gateway")

_HTTP_TYPES = {
    400: "InvalidRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "PayloadTooLargeError",
}


RETRY_AFTER_S = 1
"""What a caller is told to wait while Redis or the blob store is out of reach (a restart takes
about that)."""


def error_response(
    status: int, detail: Any, error_type: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "error_type": error_type}, status, headers=headers)


async def klieg_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KliegError)
    headers = None
    if isinstance(exc, QueueFullError | RateLimitedError) and exc.retry_after_s is not None:
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif isinstance(exc, UnavailableError | StorageError):
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return error_response(exc.status_code, exc.detail, exc.error_type, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = _HTTP_TYPES.get(exc.status_code, "HTTPError")
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, exc.detail, kind, headers=headers)


async def unavailable(request: Request, exc: Exception) -> Response:
    """Redis is down, restarting or loading: 503, try again shortly (nothing was accepted)."""
    log.warning("Redis unavailable on %s %s: %s", request.method, request.url.path, exc)
    err = UnavailableError("the request store is unavailable; retry shortly")
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return error_response(err.status_code, err.detail, err.error_type, headers=headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error", "InternalError")


HANDLERS: dict[Any, Any] = {
    KliegError: klieg_error,
    HTTPException: http_error,
    **dict.fromkeys(UNAVAILABLE, unavailable),
    Exception: internal_error,
}
