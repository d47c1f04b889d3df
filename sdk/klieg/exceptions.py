"""Typed errors shared by the SDK, the runtime and the platform.

Every error that crosses the wire has an ``error_type`` (its class name) and a ``detail``.
The gateway maps each class to one HTTP status (``klieg_platform.gateway.errors``); the client
maps ``error_type`` back to the class, so ``except klieg.NotFoundError`` works on both sides.

Example::

    try:
        client.run("me/echo", {"text": "hi"})
    except klieg.ValidationError as exc:
        print(exc.detail)
"""

from __future__ import annotations

from typing import Any


class KliegError(Exception):
    """Base of every Klieg error. ``detail`` is a message or a JSON-able structure."""

    status_code: int = 500

    def __init__(
        self,
        detail: Any = None,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
    ) -> None:
        self.detail = detail if detail is not None else self.__class__.__doc__
        if status_code is not None:
            self.status_code = status_code
        self._error_type = error_type
        super().__init__(detail if isinstance(detail, str) else repr(detail))

    @property
    def error_type(self) -> str:
        """The wire name: the class name, or the more specific name the server sent."""
        return self._error_type or type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return {"detail": self.detail, "error_type": self.error_type}


class AuthenticationError(KliegError):
    """Missing or invalid API key."""

    status_code = 401


class PermissionDeniedError(KliegError):
    """The key is valid but may not do this."""

    status_code = 403


class NotFoundError(KliegError):
    """Unknown app, alias, revision, path or request."""

    status_code = 404


class InvalidRequestError(KliegError):
    """The request is malformed (bad JSON, bad parameters, bad state for the operation)."""

    status_code = 400


class PayloadTooLargeError(KliegError):
    """The request body exceeds the configured size limit."""

    status_code = 413


class ValidationError(KliegError):
    """The body does not match the endpoint's input model; ``detail`` names the fields."""

    status_code = 422


class QueueFullError(KliegError):
    """The queue for this tier is full; retry after the advertised delay (``Retry-After``)."""

    status_code = 429

    def __init__(self, detail: Any = None, *, queued: int = 0, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.queued = queued
        self.retry_after_s: int | None = None


class RateLimitedError(KliegError):
    """This API key sent more requests than its rate limit allows; retry after ``Retry-After``."""

    status_code = 429

    def __init__(self, detail: Any = None, *, retry_after_s: int | None = None, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.retry_after_s = retry_after_s


class AppError(KliegError):
    """The endpoint raised; ``detail`` carries the exception type and message."""

    status_code = 500


class SetupError(KliegError):
    """The app's ``setup()`` raised or the runner failed to start."""

    status_code = 503


class RunnerCrashedError(KliegError):
    """The runner process died while serving the request."""

    status_code = 500


class WorkerLostError(KliegError):
    """The worker serving the request disappeared too many times."""

    status_code = 500


class RequestTimeoutError(KliegError):
    """The request ran past its timeout."""

    status_code = 504


class RequestCancelledError(KliegError):
    """The request was cancelled before it completed."""

    status_code = 499


class DeployError(KliegError):
    """A deploy failed (unresolvable requirements, env build failure, bad app file)."""

    status_code = 400


class UnavailableError(KliegError):
    """The platform cannot serve the request right now."""

    status_code = 503


_BY_NAME: dict[str, type[KliegError]] = {
    cls.__name__: cls
    for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, KliegError)
}


def error_class(error_type: str | None) -> type[KliegError]:
    """The SDK class named by a wire ``error_type``; ``KliegError`` for other names."""
    return _BY_NAME.get(error_type or "", KliegError)


def from_wire(body: Any, status_code: int, fallback: type[KliegError] = KliegError) -> KliegError:
    """Rebuild a typed error from a JSON error body ``{"detail", "error_type"}``.

    A server-side type the SDK does not define (say ``EnvResolutionError``) becomes ``fallback``
    and keeps its wire name in ``error_type``.
    """
    if isinstance(body, dict):
        name = body.get("error_type")
        cls = error_class(name)
        if cls is KliegError:
            cls = fallback
        return cls(body.get("detail"), status_code=status_code, error_type=name)
    return fallback(body, status_code=status_code)
