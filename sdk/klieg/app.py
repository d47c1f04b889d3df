"""Apps, functions, classes and endpoints. Decorators only RECORD; nothing runs at import.

Example::

    import klieg
    from pydantic import BaseModel

    class In(BaseModel):
        text: str

    class Out(BaseModel):
        text: str

    app = klieg.App("echo", requirements=["markdown==3.7"], python="3.11")

    @app.function(keep_alive=60)
    @klieg.endpoint("/")
    def echo(req: In) -> Out:
        return Out(text=req.text)

    @app.cls(gpu="H100", max_concurrency=2)
    class Model:
        def setup(self) -> None:       # once per runner, before the first request
            self.prefix = ">> "

        @klieg.endpoint("/say")
        def say(self, req: In) -> Out:
            return Out(text=self.prefix + req.text)

``klieg deploy app.py`` reads ``app.spec()`` and ships the app's folder as the code archive.
"""

from __future__ import annotations

import base64
import inspect
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import cloudpickle
from pydantic import BaseModel

from klieg.exceptions import KliegError
from klieg.types import (
    AppSpec,
    EndpointSpec,
    FunctionSpec,
    module_name_problem,
    normalize_path,
    secret_name_problem,
)

T = TypeVar("T")

ENDPOINT_ATTR = "__klieg_endpoint__"
BATCH_ATTR = "__klieg_batch__"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def endpoint(
    path: str = "/", *, max_batch_size: int | None = None, batch_wait_ms: float | None = None
) -> Callable[[T], T]:
    """Expose a function or method at ``POST /{owner}/{app}{path}``.

    A batched endpoint takes ``list[In]`` and returns ``list[Out]`` of the same length, in order:
    the runner gathers up to ``max_batch_size`` requests of this endpoint (waiting at most
    ``batch_wait_ms`` after the first) and calls it once. Each HTTP request still sends one
    ``In`` and gets one ``Out``. An item of the returned list may be an exception: only that
    request fails. Both settings default to those of ``@app.cls`` / ``@app.function``.

    Example::

        @klieg.endpoint("/thumbnail")
        def thumbnail(self, req: ThumbIn) -> ThumbOut: ...

        @klieg.endpoint("/embed", max_batch_size=32, batch_wait_ms=10)
        def embed(self, reqs: list[EmbedIn]) -> list[EmbedOut]: ...
    """
    if max_batch_size is not None and max_batch_size < 1:
        raise KliegError("max_batch_size must be >= 1")
    if batch_wait_ms is not None and batch_wait_ms < 0:
        raise KliegError("batch_wait_ms must be >= 0")

    def mark(fn: T) -> T:
        setattr(fn, ENDPOINT_ATTR, normalize_path(path))
        setattr(fn, BATCH_ATTR, (max_batch_size, batch_wait_ms))
        return fn

    return mark


@dataclass(frozen=True)
class _Options:
    gpu: str | None
    num_gpus: int
    keep_alive: float
    min_concurrency: int
    max_concurrency: int
    concurrency_buffer: int
    request_timeout: float
    startup_timeout: float
    retries: int
    max_batch_size: int | None
    batch_wait_ms: float


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: str
    obj: Any
    options: _Options


class App:
    """A named app: its environment (Python + requirements) and its functions and classes.

    ``preload`` names the modules the zygote its runners fork from imports ahead of any cold
    start (None: the third-party modules its code imports, found at deploy; ``[]``: none).
    ``preload_code=True`` gives each revision a zygote of its own that also imports the
    revision's code (the module-level code runs there, without the app's secrets; ``setup()``
    still runs in each runner), so a cold start skips loading the code as well; a revision
    whose zygote cannot start falls back to the env's zygote, then to a plain start.

    Example::

        app = klieg.App("digits", requirements=["torch==2.13.0"], python="3.11")
        app = klieg.App("sdxl", requirements=["diffusers"], preload=["torch"], preload_code=True)
    """

    def __init__(
        self,
        name: str,
        *,
        requirements: Sequence[str] = (),
        python: str = "3.11",
        secrets: Sequence[str] = (),
        preload: Sequence[str] | None = None,
        preload_code: bool = False,
    ) -> None:
        if not _NAME.match(name):
            raise KliegError(f"invalid app name {name!r}: use lowercase letters, digits, - and _")
        for secret in secrets:
            if (problem := secret_name_problem(secret)) is not None:
                raise KliegError(problem)
        self.name = name
        self.requirements = tuple(requirements)
        self.python = python
        self.secrets = tuple(secrets)
        """Secrets (``klieg secrets set NAME``) its runners get as environment variables."""
        self.preload = None if preload is None else tuple(preload)
        """Modules its runners' zygote imports before forking them (None: what the code
        imports, found at deploy; empty: none)."""
        for module in self.preload or ():
            if (problem := module_name_problem(module)) is not None:
                raise KliegError(problem)
        if not isinstance(preload_code, bool):
            raise KliegError(f"preload_code must be True or False, not {preload_code!r}")
        self.preload_code = preload_code
        """Whether each revision's zygote also imports the revision's code."""
        self._entries: list[_Entry] = []

    def function(
        self,
        *,
        gpu: str | None = None,
        num_gpus: int | None = None,
        keep_alive: float = 60.0,
        min_concurrency: int = 0,
        max_concurrency: int = 1,
        concurrency_buffer: int = 0,
        request_timeout: float = 600.0,
        startup_timeout: float = 300.0,
        retries: int = 0,
        max_batch_size: int | None = None,
        batch_wait_ms: float = 0.0,
        name: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Record a plain function; served at its ``@endpoint`` path or at ``/{name}``.

        Example::

            @app.function(keep_alive=30)
            def thumbnail(req: ThumbIn) -> ThumbOut: ...
        """
        opts = _options(
            gpu,
            num_gpus,
            keep_alive,
            min_concurrency,
            max_concurrency,
            concurrency_buffer,
            request_timeout,
            startup_timeout,
            retries,
            max_batch_size,
            batch_wait_ms,
        )

        def record(fn: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.isclass(fn):
                raise KliegError("use @app.cls for classes")
            self._add(_Entry(name or fn.__name__, "function", fn, opts))
            return fn

        return record

    def cls(
        self,
        *,
        gpu: str | None = None,
        num_gpus: int | None = None,
        keep_alive: float = 60.0,
        min_concurrency: int = 0,
        max_concurrency: int = 1,
        concurrency_buffer: int = 0,
        request_timeout: float = 600.0,
        startup_timeout: float = 300.0,
        retries: int = 0,
        max_batch_size: int | None = None,
        batch_wait_ms: float = 0.0,
        name: str | None = None,
    ) -> Callable[[type[T]], type[T]]:
        """Record a class: ``setup()`` runs once per runner; ``@endpoint`` methods serve requests.
        An optional ``provide_hints()`` returns the runner hints this runner serves best now
        (strings: the LoRAs it has loaded, say); it is asked after ``setup()`` and after each
        request, and a request whose ``X-Fal-Runner-Hint`` is one of them goes to this runner
        while it is free (fal's routing hints).

        Example::

            @app.cls(gpu="H100", keep_alive=300)
            class Model:
                def setup(self) -> None:
                    self.loras: dict[str, object] = {}
                def provide_hints(self) -> list[str]:
                    return list(self.loras)
                @klieg.endpoint("/")
                def generate(self, req: In) -> Out: ...
        """
        opts = _options(
            gpu,
            num_gpus,
            keep_alive,
            min_concurrency,
            max_concurrency,
            concurrency_buffer,
            request_timeout,
            startup_timeout,
            retries,
            max_batch_size,
            batch_wait_ms,
        )

        def record(klass: type[T]) -> type[T]:
            if not inspect.isclass(klass):
                raise KliegError("@app.cls decorates a class")
            self._add(_Entry(name or klass.__name__, "cls", klass, opts))
            return klass

        return record

    def _add(self, entry: _Entry) -> None:
        if any(e.name == entry.name for e in self._entries):
            raise KliegError(f"app {self.name!r} already has a function named {entry.name!r}")
        self._entries.append(entry)

    def spec(self, entrypoint: str = "app.py") -> AppSpec:
        """The declarative description the platform stores in a revision."""
        functions = tuple(_function_spec(e) for e in self._entries)
        seen: dict[str, str] = {}
        for fn in functions:
            for ep in fn.endpoints:
                if ep.path in seen:
                    raise KliegError(
                        f"path {ep.path!r} is served by both {seen[ep.path]!r} and {fn.name!r}"
                    )
                seen[ep.path] = fn.name
        return AppSpec(
            name=self.name,
            python=self.python,
            requirements=self.requirements,
            entrypoint=entrypoint,
            functions=functions,
            secrets=self.secrets,
            preload=self.preload,
            preload_code=self.preload_code,
        )


def _options(
    gpu: str | None,
    num_gpus: int | None,
    keep_alive: float,
    min_concurrency: int,
    max_concurrency: int,
    concurrency_buffer: int,
    request_timeout: float,
    startup_timeout: float,
    retries: int,
    max_batch_size: int | None,
    batch_wait_ms: float,
) -> _Options:
    gpus = num_gpus if num_gpus is not None else (1 if gpu else 0)
    if gpus < 0 or (gpu is None and gpus > 0):
        raise KliegError("num_gpus needs a gpu type and must be >= 0")
    if min_concurrency < 0 or max_concurrency < 1 or min_concurrency > max_concurrency:
        raise KliegError("need 0 <= min_concurrency <= max_concurrency and max_concurrency >= 1")
    if concurrency_buffer < 0:
        raise KliegError("concurrency_buffer must be >= 0")
    if keep_alive < 0 or request_timeout <= 0 or startup_timeout <= 0 or retries < 0:
        raise KliegError("keep_alive and retries must be >= 0 and timeouts > 0")
    if (max_batch_size is not None and max_batch_size < 1) or batch_wait_ms < 0:
        raise KliegError("need max_batch_size >= 1 and batch_wait_ms >= 0")
    return _Options(
        gpu,
        gpus,
        keep_alive,
        min_concurrency,
        max_concurrency,
        concurrency_buffer,
        request_timeout,
        startup_timeout,
        retries,
        max_batch_size,
        batch_wait_ms,
    )


def _function_spec(entry: _Entry) -> FunctionSpec:
    if entry.kind == "cls":
        methods = [
            (name, member)
            for name, member in inspect.getmembers(entry.obj, inspect.isfunction)
            if hasattr(member, ENDPOINT_ATTR)
        ]
        if not methods:
            raise KliegError(f"class {entry.name!r} has no @klieg.endpoint method")
        o = entry.options
        endpoints = tuple(_endpoint_spec(m, getattr(m, ENDPOINT_ATTR), n, o) for n, m in methods)
    else:
        o = entry.options
        path = getattr(entry.obj, ENDPOINT_ATTR, normalize_path(entry.name))
        endpoints = (_endpoint_spec(entry.obj, path, entry.obj.__name__, o),)
    if o.max_batch_size is not None and not any(ep.batched for ep in endpoints):
        raise KliegError(
            f"{entry.name!r} sets max_batch_size but no endpoint of it takes list[In]: "
            "a batched endpoint is `def f(reqs: list[In]) -> list[Out]`"
        )
    by_value = entry.obj.__module__ == "__main__" or "<locals>" in entry.obj.__qualname__
    if by_value:
        _resolve_annotations(entry.obj)
    return FunctionSpec(
        name=entry.name,
        kind="cls" if entry.kind == "cls" else "function",
        module=entry.obj.__module__,
        qualname=entry.obj.__qualname__,
        gpu=o.gpu,
        num_gpus=o.num_gpus,
        keep_alive=o.keep_alive,
        min_concurrency=o.min_concurrency,
        max_concurrency=o.max_concurrency,
        concurrency_buffer=o.concurrency_buffer,
        request_timeout=o.request_timeout,
        startup_timeout=o.startup_timeout,
        retries=o.retries,
        endpoints=endpoints,
        pickled=base64.b64encode(cloudpickle.dumps(entry.obj)).decode() if by_value else None,
    )


def _resolve_annotations(obj: Any) -> None:
    """Replace string annotations by the objects they name, so a by-value pickle carries them."""
    targets = (
        [m for _, m in inspect.getmembers(obj, inspect.isfunction)]
        if inspect.isclass(obj)
        else [obj]
    )
    for fn in targets:
        fn.__annotations__ = typing.get_type_hints(fn)


def takes_list(fn: Callable[..., Any]) -> bool:
    """Whether the first non-self parameter of ``fn`` is annotated ``list[...]``."""
    hints = typing.get_type_hints(fn)
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    return bool(params) and typing.get_origin(hints.get(params[0].name)) is list


def io_models(fn: Callable[..., Any], batched: bool = False) -> tuple[type[BaseModel] | None, Any]:
    """The pydantic input model (first non-self parameter) and the return annotation of ``fn``;
    for a ``batched`` endpoint, the item types of its ``list[In] -> list[Out]``."""
    hints = typing.get_type_hints(fn)
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    model: type[BaseModel] | None = None
    out = hints.get("return")
    if params:
        hint = hints.get(params[0].name)
        if batched:
            hint = (typing.get_args(hint) or (None,))[0]
            out = (typing.get_args(out) or (None,))[0]
        if inspect.isclass(hint) and issubclass(hint, BaseModel):
            model = hint
    return model, out


def _endpoint_spec(fn: Callable[..., Any], path: str, method: str, o: _Options) -> EndpointSpec:
    size, wait = getattr(fn, BATCH_ATTR, (None, None))
    streaming = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
    batched = (size is not None or o.max_batch_size is not None) and takes_list(fn)
    if size is not None and not batched:
        raise KliegError(
            f"endpoint {path!r} sets max_batch_size: it must take list[In] and return list[Out]"
        )
    if batched and streaming:
        raise KliegError(f"endpoint {path!r}: a generator endpoint cannot be batched")
    model, out = io_models(fn, batched)
    item = typing.get_args(out)[0] if streaming and typing.get_args(out) else out
    out_schema = (
        item.model_json_schema() if inspect.isclass(item) and issubclass(item, BaseModel) else None
    )
    return EndpointSpec(
        path=path,
        method=method,
        input_schema=model.model_json_schema() if model else None,
        output_schema=out_schema,
        streaming=streaming,
        batched=batched,
        max_batch_size=(size or o.max_batch_size or 1) if batched else 1,
        batch_wait_ms=(wait if wait is not None else o.batch_wait_ms) if batched else 0.0,
    )
