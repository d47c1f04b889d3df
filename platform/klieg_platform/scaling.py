"""Scale overrides: a live app's scaling, changed without a redeploy.

A revision's spec is immutable; its functions' scaling (``keep_alive``, ``min_concurrency``,
``max_concurrency``, ``concurrency_buffer``) can be overridden per app (``function`` ``""``:
every function) or per function, in the registry beside the revisions (``klieg apps scale``).
Overrides belong to the app, not to a revision: a redeploy keeps them unless it asks to reset
them (``klieg deploy --reset-scale``). Each value is resolved on its own: the function's
override, else the app's, else the spec's. The worker's runner policy, its keep-warm rounds and
the autoscaler all read the effective values (``effective``).

Example::

    override = ScaleOverride(function="", min_concurrency=2)
    spec = effective_app(spec, [override])        # every function keeps two runners warm
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from klieg.exceptions import InvalidRequestError
from klieg.types import AppSpec, FunctionSpec

SETTINGS = ("keep_alive", "min_concurrency", "max_concurrency", "concurrency_buffer")
"""The scaling fields of a ``FunctionSpec`` an override may set."""

MAX_KEEP_ALIVE_S = 30 * 24 * 3600.0
MAX_RUNNERS = 10_000
"""An override's bounds (``gateway/bodies.ScaleChange`` refuses others): keep_alive in
[0, MAX_KEEP_ALIVE_S] seconds; min_concurrency and concurrency_buffer in [0, MAX_RUNNERS],
max_concurrency in [1, MAX_RUNNERS]."""


@dataclass(frozen=True)
class ScaleOverride:
    """One app's (``function`` ``""``) or one function's overridden scaling; None: not
    overridden (the next level decides)."""

    function: str = ""
    keep_alive: float | None = None
    min_concurrency: int | None = None
    max_concurrency: int | None = None
    concurrency_buffer: int | None = None
    updated_at: float = 0.0

    def values(self) -> dict[str, Any]:
        """The settings this override sets."""
        return {name: getattr(self, name) for name in SETTINGS if getattr(self, name) is not None}


def _update(function: str, overrides: Sequence[ScaleOverride]) -> dict[str, Any]:
    """The settings ``overrides`` set for ``function`` (the function's own over the app's)."""
    update: dict[str, Any] = {}
    for level in ("", function):
        for override in overrides:
            if override.function == level:
                update.update(override.values())
    return update


def effective(fn: FunctionSpec, overrides: Sequence[ScaleOverride]) -> FunctionSpec:
    """``fn`` with its app's ``overrides`` applied."""
    update = _update(fn.name, overrides)
    return fn.model_copy(update=update) if update else fn


def effective_doc(spec: dict[str, Any], overrides: Sequence[ScaleOverride]) -> dict[str, Any]:
    """A stored spec document (an ``AppSpec`` as JSON) with ``overrides`` applied to its
    functions; ``spec`` itself is left as it is."""
    if not overrides:
        return spec
    functions = [{**fn, **_update(str(fn.get("name")), overrides)} for fn in spec["functions"]]
    return {**spec, "functions": functions}


def effective_app(spec: AppSpec, overrides: Sequence[ScaleOverride]) -> AppSpec:
    """``spec`` with every function's scaling resolved through ``overrides``."""
    if not overrides:
        return spec
    functions = tuple(effective(fn, overrides) for fn in spec.functions)
    return spec.model_copy(update={"functions": functions})


def check_effective(spec: AppSpec, overrides: Sequence[ScaleOverride]) -> None:
    """``InvalidRequestError`` naming a function of ``spec`` whose resolved scaling is not
    coherent (``min_concurrency`` above ``max_concurrency``, as the decorators refuse)."""
    for fn in effective_app(spec, overrides).functions:
        if fn.min_concurrency > fn.max_concurrency:
            raise InvalidRequestError(
                f"function {fn.name!r} would keep min_concurrency {fn.min_concurrency} above "
                f"max_concurrency {fn.max_concurrency}: set both"
            )


def scaling_view(fn: FunctionSpec) -> dict[str, Any]:
    """A function's scaling as the API shows it."""
    return {"function": fn.name, **{name: getattr(fn, name) for name in SETTINGS}}


def override_view(override: ScaleOverride) -> dict[str, Any]:
    """An override as the API shows it (``function`` null: the whole app)."""
    out = {f.name: getattr(override, f.name) for f in fields(override)}
    out["function"] = override.function or None
    return out
