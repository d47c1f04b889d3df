"""What the gateway's routes share: services and the hot-path caches.

Auth caches, read by ``auth.Authenticate`` (which decides what each route accepts):
(key id, sha256 of secret) -> what the key grants (tenant, scope, expiry; ``key_grant``), and
tenant id -> tenant for call tokens, which are checked by their signature first
(``token_tenant``); entries live ``auth_ttl_s``. A revoked key is dropped at once on every
gateway (``forget_key``, through the Waiter's subscription), an expired one on its next use, and
``forget_tenant`` drops a tenant's entries. Route cache: (owner, app, ref) -> revision, access
and the input schema of each endpoint (built once per route, so checking a body costs no parsing
of schemas), dropped when an alias, the visibility or a setting of that app changes (through the
Waiter's subscription, on every gateway). App cache: (owner, app) -> its record, for
``full_view``, dropped on the same changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.requests import Request

from klieg.exceptions import AuthenticationError, NotFoundError
from klieg.input_schema import InputSchema
from klieg.types import AppSpec, EndpointSpec, normalize_path
from klieg_platform import calltokens
from klieg_platform.broker import Broker
from klieg_platform.config import Settings
from klieg_platform.packager import Packager
from klieg_platform.registry import AppRecord, Grant, Registry, Revision, Tenant
from klieg_platform.registry_tables import allowed
from klieg_platform.scheduler import Tier
from klieg_platform.storage import BlobStore


@dataclass(frozen=True)
class Resolved:
    """A route's revision, its spec and its app. ``inputs``: the input schema of each endpoint
    that declares one, by normalised path, built once per cached route."""

    revision: Revision
    spec: AppSpec
    app: AppRecord
    shared_with: frozenset[str]
    inputs: Mapping[str, InputSchema] = field(default_factory=dict)

    def input_schema(self, endpoint: EndpointSpec) -> InputSchema | None:
        return self.inputs.get(normalize_path(endpoint.path))


@dataclass
class GatewayState:
    settings: Settings
    broker: Broker
    registry: Registry
    store: BlobStore
    packager: Packager
    auth_ttl_s: float = 30.0
    _keys: dict[tuple[str, str], tuple[float, Grant]] = field(default_factory=dict)
    _tokens: dict[str, tuple[float, Tenant]] = field(default_factory=dict)
    _routes: dict[tuple[str, str, str], Resolved] = field(default_factory=dict)
    _apps: dict[tuple[str, str], AppRecord] = field(default_factory=dict)
    tiers: dict[str, Tier] = field(init=False)
    """The settings' tiers by name."""

    def __post_init__(self) -> None:
        self.tiers = {t.name: t for t in self.settings.tiers}

    def tier_of(self, tenant: Tenant) -> str:
        """The tenant's tier, or the default tier when the tenant's is not configured."""
        return tenant.tier if tenant.tier in self.tiers else self.settings.default_tier

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop cached credentials of a tenant whose tier or limits changed."""
        for key in [k for k, (_, g) in self._keys.items() if g.tenant.id == tenant_id]:
            del self._keys[key]
        self._tokens.pop(tenant_id, None)

    def forget_key(self, key_id: str) -> None:
        """Drop a revoked key from the cache (every gateway hears of it: ``keys.KEYS_CHANNEL``)."""
        for key in [k for k in self._keys if k[0] == key_id]:
            del self._keys[key]

    def forget_keys(self) -> None:
        """Drop every cached key (a subscription that was down may have missed revocations)."""
        self._keys.clear()

    async def key_grant(self, key_id: str, secret: str) -> Grant:
        """What API key ``key_id`` with ``secret`` grants; 401 for an unknown, revoked or
        expired key."""
        cache_key = (key_id, hashlib.sha256(secret.encode()).hexdigest())
        now = time.monotonic()
        hit = self._keys.get(cache_key)
        if hit and hit[0] > now and hit[1].key.live(time.time()):
            return hit[1]
        grant = await asyncio.to_thread(self.registry.authenticate, key_id, secret)
        if grant is None:
            raise AuthenticationError("invalid, revoked or expired API key")
        self._keys[cache_key] = (now + self.auth_ttl_s, grant)
        return grant

    async def token_tenant(self, token: str) -> Tenant:
        """The tenant call token ``token`` acts for; 401 when it is forged, expired or names no
        tenant."""
        tenant_id = calltokens.verify(self.settings.signing_key, token)
        if tenant_id is None:
            raise AuthenticationError("invalid or expired call token")
        now = time.monotonic()
        hit = self._tokens.get(tenant_id)
        if hit and hit[0] > now:
            return hit[1]
        tenant = await asyncio.to_thread(self.registry.get_tenant_by_id, tenant_id)
        if tenant is None:
            raise AuthenticationError("invalid or expired call token")
        self._tokens[tenant_id] = (now + self.auth_ttl_s, tenant)
        return tenant

    async def resolve(self, caller: Tenant, owner: str, app_ref: str) -> Resolved:
        """The revision behind ``app[@ref]`` of ``owner`` (ref: alias or revision id), if the
        caller may call it; an app the caller may not see is reported as not found."""
        app, _, ref = app_ref.partition("@")
        ref = ref or "latest"
        key = (owner, app, ref)
        resolved = self._routes.get(key)
        if resolved is None:
            resolved = await asyncio.to_thread(self._load, owner, app, ref)
            if resolved is not None:
                self._routes[key] = resolved
                self._apps[(owner, app)] = resolved.app
        if resolved is None or not allowed(resolved.app, resolved.shared_with, caller):
            what = f"app {owner}/{app}" if ref == "latest" else f"{owner}/{app}@{ref}"
            raise NotFoundError(f"{what} not found")
        return resolved

    def _load(self, owner: str, app: str, ref: str) -> Resolved | None:
        record = self.registry.get_app(owner, app)
        rev = self.registry.revision_of(record, ref) if record else None
        if record is None or rev is None:
            return None
        shares = self.registry.shared_with(record) if record.visibility == "shared" else []
        spec = AppSpec.model_validate(rev.spec)
        inputs = {
            normalize_path(ep.path): InputSchema(ep.input_schema)
            for fn in spec.functions
            for ep in fn.endpoints
            if ep.input_schema is not None
        }
        return Resolved(rev, spec, record, frozenset(shares), inputs)

    async def full_view(self, tenant_id: str, owner: str, app: str) -> bool:
        """Whether tenant ``tenant_id`` sees requests to ``owner/app`` in full (every log line,
        errors as raised): it owns the app, or the app shows its logs to callers
        (``caller_logs``). Otherwise it sees them through ``klieg_platform.disclosure``. The app
        record is cached like routes (dropped on the same changes)."""
        record = self._apps.get((owner, app))
        if record is None:
            record = await asyncio.to_thread(self.registry.get_app, owner, app)
            if record is None:
                return False
            self._apps[(owner, app)] = record
        return record.owner_id == tenant_id or record.caller_logs

    def forget_app(self, owner_app: str) -> None:
        owner, _, app = owner_app.partition("/")
        for key in [k for k in self._routes if k[0] == owner and k[1] == app]:
            del self._routes[key]
        self._apps.pop((owner, app), None)


def gateway(request: Request) -> GatewayState:
    """The ``GatewayState`` of the app serving ``request`` (set by the lifespan in ``app.py``)."""
    state: GatewayState = request.app.state.gateway
    return state
