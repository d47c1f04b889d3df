"""What the gateway's routes share: services and the two hot-path caches.

Auth cache: (key id, sha256 of secret) -> tenant, for ``auth_ttl_s``; a revoked key stops working
within that time. Route cache: (owner, app, ref) -> revision, dropped when an alias of that app
moves (through the Waiter's subscription, on every gateway).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

from starlette.requests import Request

from klieg.exceptions import AuthenticationError, NotFoundError
from klieg.types import AppSpec
from klieg_platform.broker import Broker
from klieg_platform.config import Settings
from klieg_platform.packager import Packager
from klieg_platform.registry import Registry, Revision, Tenant
from klieg_platform.storage import BlobStore


@dataclass(frozen=True)
class Resolved:
    revision: Revision
    spec: AppSpec


@dataclass
class GatewayState:
    settings: Settings
    broker: Broker
    registry: Registry
    store: BlobStore
    packager: Packager
    auth_ttl_s: float = 30.0
    _auth: dict[tuple[str, str], tuple[float, Tenant]] = field(default_factory=dict)
    _routes: dict[tuple[str, str, str], Resolved] = field(default_factory=dict)

    async def tenant(self, request: Request) -> Tenant:
        """The caller's tenant from ``Authorization: Key <id>:<secret>``; 401 otherwise."""
        tenant = await self.optional_tenant(request)
        if tenant is None:
            raise AuthenticationError(
                "missing credentials: send 'Authorization: Key <key_id>:<secret>'"
            )
        return tenant

    async def optional_tenant(self, request: Request) -> Tenant | None:
        header = request.headers.get("authorization")
        if not header:
            return None
        scheme, _, cred = header.partition(" ")
        key_id, sep, secret = cred.strip().partition(":")
        if scheme.lower() not in ("key", "bearer") or not sep or not key_id or not secret:
            raise AuthenticationError("malformed Authorization header; use 'Key <id>:<secret>'")
        cache_key = (key_id, hashlib.sha256(secret.encode()).hexdigest())
        now = time.monotonic()
        hit = self._auth.get(cache_key)
        if hit and hit[0] > now:
            return hit[1]
        tenant = await asyncio.to_thread(self.registry.authenticate, key_id, secret)
        if tenant is None:
            raise AuthenticationError("invalid API key")
        self._auth[cache_key] = (now + self.auth_ttl_s, tenant)
        return tenant

    async def resolve(self, caller: Tenant, owner: str, app_ref: str) -> Resolved:
        """The revision behind ``app[@ref]`` of ``owner`` (ref: alias or revision id)."""
        app, _, ref = app_ref.partition("@")
        ref = ref or "latest"
        if owner != caller.name:
            raise NotFoundError(f"app {owner}/{app} not found")
        key = (owner, app, ref)
        hit = self._routes.get(key)
        if hit is not None:
            return hit
        rev = await asyncio.to_thread(self.registry.resolve, owner, app, ref)
        if rev is None:
            what = f"app {owner}/{app}" if ref == "latest" else f"{owner}/{app}@{ref}"
            raise NotFoundError(f"{what} not found")
        resolved = Resolved(rev, AppSpec.model_validate(rev.spec))
        self._routes[key] = resolved
        return resolved

    def forget_app(self, owner_app: str) -> None:
        owner, _, app = owner_app.partition("/")
        for key in [k for k in self._routes if k[0] == owner and k[1] == app]:
            del self._routes[key]
