"""The worker's revision cache: a revision and its parsed spec, read from the registry once per
worker (revisions are immutable, so an entry never goes stale), and its apps' scale overrides
(mutable: ``Warmth`` reads them again each time it reads its keep-warm targets), which
``target`` and ``effective`` apply."""

from __future__ import annotations

import asyncio

from klieg.exceptions import NotFoundError
from klieg.types import AppSpec, EndpointSpec, FunctionSpec, normalize_path
from klieg_platform.registry import Registry, Revision
from klieg_platform.scaling import ScaleOverride, effective
from klieg_platform.worker.process import RunnerKey


class Revisions:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._cache: dict[str, tuple[Revision, AppSpec]] = {}
        self._scaling: dict[str, list[ScaleOverride]] = {}
        """App id -> its scale overrides, as last read."""

    def set_scaling(self, overrides: dict[str, list[ScaleOverride]]) -> None:
        """The apps' scale overrides as the registry has them now."""
        self._scaling = overrides

    def effective(self, key: RunnerKey) -> FunctionSpec | None:
        """The function of a cached revision with its app's overrides applied (None when the
        revision is not cached or has no such function)."""
        cached = self._cache.get(key[0])
        fn = cached[1].function(key[1]) if cached else None
        if cached is None or fn is None:
            return None
        return effective(fn, self._scaling.get(cached[0].app_id, []))

    async def get(self, revision_id: str) -> tuple[Revision, AppSpec]:
        """The revision and its spec; NotFoundError when the registry has no such revision."""
        cached = self._cache.get(revision_id)
        if cached is None:
            rev = await asyncio.to_thread(self.registry.get_revision, revision_id)
            if rev is None:
                raise NotFoundError(f"revision {revision_id} not found")
            cached = (rev, AppSpec.model_validate(rev.spec))
            self._cache[revision_id] = cached
        return cached

    async def target(
        self, revision_id: str, function: str, endpoint: str
    ) -> tuple[Revision, FunctionSpec, EndpointSpec | None]:
        """The revision, function (its scaling as overridden) and endpoint a job names (the
        endpoint None when the function declares none at that path); NotFoundError for an
        unknown function."""
        rev, _ = await self.get(revision_id)
        fn = self.effective((revision_id, function))
        if fn is None:
            raise NotFoundError(f"revision {rev.id} has no function {function!r}")
        path = normalize_path(endpoint)
        ep = next((e for e in fn.endpoints if normalize_path(e.path) == path), None)
        return rev, fn, ep

    def app_key(self, revision_id: str) -> str:
        """ "owner/app" of a cached revision ("" when it is not cached)."""
        cached = self._cache.get(revision_id)
        return f"{cached[0].owner}/{cached[0].app}" if cached else ""
