"""Wire models shared by the SDK, the runtime and the platform.

An :class:`AppSpec` is what ``klieg deploy`` sends: the app's environment (Python version and
requirements) and, for every function or class, its hardware, scaling and endpoints. The platform
stores it inside an immutable revision; the runner uses it to find the code to call.

Example::

    spec = app.spec()              # from a klieg.App
    print(spec.functions[0].endpoints[0].path)
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_SECRET_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_RESERVED_SECRET_PREFIXES = ("KLIEG_", "PYTHON", "CUDA_", "LD_")
_HINT = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
MAX_HINTS = 64
"""At most this many of the hints a runner reports count (the first ones)."""


def module_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a module to preload (``App(preload=...)``), or None."""
    if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
        return f"invalid module name {name!r} in preload: a dotted Python name, as in import"
    return None


def secret_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an app secret (it becomes an environment variable of the
    app's runners), or None when it can."""
    if not _SECRET_NAME.fullmatch(name):
        return f"invalid secret name {name!r}: upper-case letters, digits and _, as an env variable"
    if name.startswith(_RESERVED_SECRET_PREFIXES) or name in ("PATH", "HOME"):
        return f"secret name {name!r} is reserved"
    return None


def hint_problem(hint: object) -> str | None:
    """Why ``hint`` cannot be a runner hint (a request's ``X-Fal-Runner-Hint``, an item of an
    app's ``provide_hints()``): a string of 1-256 characters, none of them a control
    character; None when it can."""
    if not isinstance(hint, str) or not _HINT.fullmatch(hint):
        return f"a runner hint is 1-256 characters, no control characters; got {hint!r:.80}"
    return None


class EndpointSpec(BaseModel):
    """One HTTP endpoint: ``POST /{owner}/{app}{path}`` calls ``method`` of a function or class."""

    model_config = ConfigDict(frozen=True)

    path: str = "/"
    method: str
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    streaming: bool = False
    """A generator endpoint: its items stream as server-sent events (``POST .../stream``)."""
    batched: bool = False
    """The endpoint takes ``list[In]`` and returns ``list[Out]``; requests are gathered."""
    max_batch_size: int = 1
    batch_wait_ms: float = 0.0
    """How long the first request of a batch may wait for others to join it."""


class FunctionSpec(BaseModel):
    """A function or class of an app, with everything the platform needs to place and scale it."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["function", "cls"]
    module: str
    qualname: str
    gpu: str | None = None
    num_gpus: int = 0
    keep_alive: float = 60.0
    min_concurrency: int = 0
    max_concurrency: int = 1
    concurrency_buffer: int = 0
    """Runners kept warm beyond current demand across the platform: the function keeps
    ``max(min_concurrency, busy runners + concurrency_buffer)`` runners."""
    request_timeout: float = 600.0
    startup_timeout: float = 300.0
    retries: int = 0
    """Extra attempts when the runner process dies (segfault, OOM) while serving a request."""
    endpoints: tuple[EndpointSpec, ...] = ()
    pickled: str | None = None
    """base64 cloudpickle of the function or class, when it cannot be imported by name."""

    @property
    def pool(self) -> str:
        """The machine pool this function runs in: ``CPU`` or ``GPU-<type>``."""
        return f"GPU-{self.gpu.upper()}" if self.gpu else "CPU"


class AppSpec(BaseModel):
    """The declarative description of an app, as recorded by its decorators."""

    model_config = ConfigDict(frozen=True)

    name: str
    python: str = "3.11"
    requirements: tuple[str, ...] = ()
    entrypoint: str = "app.py"
    functions: tuple[FunctionSpec, ...] = Field(default_factory=tuple)
    secrets: tuple[str, ...] = ()
    """Names of the owner's secrets its runners get as environment variables (never values)."""
    preload: tuple[str, ...] | None = None
    """Modules the zygote its runners fork from imports ahead of any start (``torch``,
    ``numpy``); None: the third-party modules its code imports, filled in at deploy; ``()``:
    the runtime only."""
    preload_code: bool = False
    """Each revision gets a zygote of its own that also imports the revision's code (its
    functions' modules, without running ``setup()``), so a runner forked from it skips loading
    the code too; False: one zygote per env and ``preload``, shared by every revision on it."""

    @field_validator("preload")
    @classmethod
    def _module_names(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if names is None:
            return None
        for name in names:
            if (problem := module_name_problem(name)) is not None:
                raise ValueError(problem)
        return tuple(sorted(set(names)))

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if (problem := secret_name_problem(name)) is not None:
                raise ValueError(problem)
        return tuple(sorted(set(names)))

    def route(self, path: str) -> tuple[FunctionSpec, EndpointSpec] | None:
        """The function and endpoint serving ``path`` (leading/trailing slashes ignored)."""
        want = normalize_path(path)
        for fn in self.functions:
            for ep in fn.endpoints:
                if normalize_path(ep.path) == want:
                    return fn, ep
        return None

    def function(self, name: str) -> FunctionSpec | None:
        return next((f for f in self.functions if f.name == name), None)


def normalize_path(path: str) -> str:
    """``""``, ``"/"`` and ``"//"`` are the root; ``"a/"`` equals ``"/a"``."""
    return "/" + path.strip("/")
