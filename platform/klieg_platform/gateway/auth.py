"""Who may use each route, and who is calling: the gateway's one authentication step.

Every route of ``app.ROUTES`` is made by ``route()`` with an ``Access``; ``Authenticate``, a pure
ASGI middleware on that route, runs after routing and before the handler (so a path no route
matches is 404 and a wrong method 405, as without auth, and its errors leave through
``errors.py`` like a handler's). First, on every route, a path parameter holding a control
character (a NUL above all: PostgreSQL's text holds none) is a 400 ``InvalidRequestError``.

- ``PUBLIC``: credentials are not read (``/health``, file downloads by signed URL).
- ``BOOTSTRAP``: an API key when one is sent; without one the handler decides (``POST /keys``
  makes the first tenant of an empty platform).
- ``CALLER``: an API key or a call token; 401 without.
- ``MANAGE``: an API key of scope ``deploy`` or ``admin``; 401 without.
- ``ADMIN``: an API key of scope ``admin`` (keys, tenants).

A call token is 403 on ``BOOTSTRAP``, ``MANAGE`` and ``ADMIN`` routes, whether or not its
signature holds; a key whose scope (``registry.SCOPES``) is below the route's is 403.

Credentials come from one ``Authorization`` header: ``Key <id>:<secret>`` (``Bearer`` for
``Key`` also works), or ``Bearer kc1.…`` for a call token (``calltokens.py``). A malformed header,
an unknown or revoked key, and a forged, expired or tenantless call token are 401. The tenant is
resolved through the caches of ``GatewayState`` (one lookup on a cache hit) and kept in
``scope["state"]``; handlers take it with ``caller(request)`` or ``optional_caller(request)``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from klieg.exceptions import (
    AuthenticationError,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitedError,
)
from klieg_platform import calltokens
from klieg_platform.gateway.state import GatewayState
from klieg_platform.registry import CONTROL, ApiKey, Tenant
from klieg_platform.registry_tables import scope_allows

MISSING = "missing credentials: send 'Authorization: Key <key_id>:<secret>'"
MALFORMED = "malformed Authorization header; use 'Key <id>:<secret>'"
NOT_FOR_TOKENS = "a call token may call apps but not manage them"
_CALLER = "caller"
"""The key of the caller's tenant in ``scope["state"]``."""


class Access(enum.Enum):
    """What a route needs from its caller (see the module docstring)."""

    PUBLIC = "public"
    BOOTSTRAP = "bootstrap"
    CALLER = "caller"
    MANAGE = "manage"
    ADMIN = "admin"


PUBLIC, BOOTSTRAP, CALLER, MANAGE, ADMIN = (
    Access.PUBLIC, Access.BOOTSTRAP, Access.CALLER, Access.MANAGE, Access.ADMIN,
)  # fmt: skip
_SCOPE_NEEDED = {Access.BOOTSTRAP: "call", Access.CALLER: "call", Access.MANAGE: "deploy",
                 Access.ADMIN: "admin"}  # fmt: skip
"""The key scope (``registry.SCOPES``) each access needs."""
_KEY = "key"
"""The caller's ``ApiKey`` in ``scope["state"]`` (absent for call tokens)."""


class Authenticate:
    """ASGI middleware of one route: resolve the caller as ``access`` requires, or raise."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope.get("path_params", {}).items():
            if isinstance(value, str) and CONTROL.search(value):
                raise InvalidRequestError(f"the path's {name} may not hold control characters")
        if self.access is not Access.PUBLIC:
            state = scope.setdefault("state", {})
            state[_CALLER] = await self._tenant(scope)
        await self.app(scope, receive, send)

    async def _tenant(self, scope: Scope) -> Tenant | None:
        header = _authorization(scope)
        if not header:
            if self.access is Access.BOOTSTRAP:
                return None
            raise AuthenticationError(MISSING)
        scheme, _, cred = header.partition(" ")
        scheme, cred = scheme.lower(), cred.strip()
        gw: GatewayState = scope["app"].state.gateway
        if scheme == "bearer" and calltokens.is_call_token(cred):
            if self.access is not Access.CALLER:
                raise PermissionDeniedError(NOT_FOR_TOKENS)
            return await gw.token_tenant(cred)
        key_id, sep, secret = cred.partition(":")
        if scheme not in ("key", "bearer") or not sep or not key_id or not secret:
            raise AuthenticationError(MALFORMED)
        grant = await gw.key_grant(key_id, secret)
        needed = _SCOPE_NEEDED[self.access]
        if not scope_allows(grant.key.scope, needed):
            raise PermissionDeniedError(
                f"this key's scope is {grant.key.scope!r}; this needs a {needed!r} key"
            )
        key = grant.key
        if key.rate_per_s > 0:
            wait_s = await gw.broker.limits.take(key.id, key.rate_per_s, key.burst)
            if wait_s > 0:
                raise RateLimitedError(
                    f"rate limit of this key: {key.rate_per_s:g} requests/s, burst {key.burst}",
                    retry_after_s=max(1, math.ceil(wait_s)),
                )
        scope["state"][_KEY] = key
        return grant.tenant


def _authorization(scope: Scope) -> str | None:
    """The first ``Authorization`` header (ASGI header names are lower case)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            text: str = value.decode("latin-1")
            return text
    return None


def route(
    method: str, path: str, endpoint: Callable[[Request], Awaitable[Response]], access: Access
) -> Route:
    """The route ``method path`` -> ``endpoint``, its requests authenticated for ``access``."""
    return Route(path, endpoint, methods=[method], middleware=[Middleware(Authenticate, access)])


def optional_caller(request: Request) -> Tenant | None:
    """The caller's tenant; None on a ``PUBLIC`` route, or a ``BOOTSTRAP`` one sent no key."""
    tenant: Tenant | None = request.scope.get("state", {}).get(_CALLER)
    return tenant


def caller_key(request: Request) -> ApiKey | None:
    """The API key the caller sent; None for a call token or no credentials."""
    key: ApiKey | None = request.scope.get("state", {}).get(_KEY)
    return key


def caller(request: Request) -> Tenant:
    """The caller's tenant; 401 where ``optional_caller`` is None."""
    tenant = optional_caller(request)
    if tenant is None:
        raise AuthenticationError(MISSING)
    return tenant
