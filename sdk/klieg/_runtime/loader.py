"""Load a revision's function or class from its unpacked code and wrap its endpoints.

A :class:`Target` is what the runner serves: ``setup()`` once, then ``call(path, body)`` per
request, where ``body`` and the return value are JSON bytes. Input validation happens here, with
the endpoint's pydantic model, so a 422 names the offending field exactly as pydantic does.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import inspect
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pydantic
import pydantic_core

from klieg.app import io_models
from klieg.exceptions import (
    AppError,
    KliegError,
    NotFoundError,
    RequestCancelledError,
    ValidationError,
)
from klieg.types import MAX_HINTS, FunctionSpec, hint_problem, normalize_path


def import_entry(code_dir: Path, module: str) -> Any:
    """Import ``module`` with ``code_dir`` first on sys.path (the app's folder is its root)."""
    root = str(code_dir)
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(module)


def _resolve(obj: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class Endpoint:
    """One callable endpoint with its input model; ``__call__`` maps JSON bytes to JSON bytes."""

    def __init__(
        self, fn: Callable[..., Any], loop: asyncio.AbstractEventLoop, batched: bool = False
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.batched = batched
        self.model, _ = io_models(fn, batched)
        self.takes_arg = bool(
            [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
        )
        self.streaming = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)

    def parse(self, body: bytes) -> Any:
        raw = body or b"{}"
        if self.model is None:
            try:
                return pydantic_core.from_json(raw)
            except ValueError as exc:
                raise ValidationError(
                    [{"loc": ["body"], "msg": str(exc), "type": "json_invalid"}]
                ) from exc
        try:
            return self.model.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                [
                    {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                    for e in exc.errors(include_url=False)
                ]
            ) from exc

    def __call__(self, body: bytes) -> bytes:
        """Run a plain endpoint: JSON in, JSON out."""
        arg = self.parse(body)
        try:
            result = self.fn(arg) if self.takes_arg else self.fn()
            if inspect.isawaitable(result):
                result = self.loop.run_until_complete(result)
        except KliegError:
            raise
        except Exception as exc:
            raise AppError(f"{type(exc).__name__}: {exc}") from exc
        return _dump(result)

    def batch(self, bodies: list[bytes]) -> list[bytes | KliegError]:
        """Run a batched endpoint once over the valid items of ``bodies``; one result per body,
        in order: its output JSON, or the error of that request alone. An input that fails
        validation, or an item the endpoint returned as an exception, fails only its request.
        When the call itself raises, each request is run alone so that only those that fail
        alone fail."""
        out: list[bytes | KliegError] = []
        args: list[Any] = []
        for body in bodies:
            try:
                args.append(self.parse(body))
                out.append(b"")
            except KliegError as exc:
                out.append(exc)
        results = iter(self._run_batch(args))
        return [next(results) if item == b"" else item for item in out]

    def _run_batch(self, args: list[Any]) -> list[bytes | KliegError]:
        if not args:
            return []
        try:
            results = self.fn(args)
            if inspect.isawaitable(results):
                results = self.loop.run_until_complete(results)
        except RequestCancelledError:
            raise
        except KliegError as exc:
            if len(args) == 1:
                return [exc]
            return [self._run_batch([arg])[0] for arg in args]
        except Exception as exc:
            if len(args) == 1:
                return [AppError(f"{type(exc).__name__}: {exc}")]
            return [self._run_batch([arg])[0] for arg in args]
        if not isinstance(results, list | tuple) or len(results) != len(args):
            got = len(results) if isinstance(results, list | tuple) else type(results).__name__
            err = AppError(f"batched endpoint returned {got} results for {len(args)} requests")
            return [err] * len(args)
        return [_dump_item(item) for item in results]

    def items(self, body: bytes) -> Iterator[bytes]:
        """Run a generator endpoint: JSON in, one JSON document per yielded item."""
        arg = self.parse(body)
        gen = self.fn(arg) if self.takes_arg else self.fn()
        try:
            if inspect.isasyncgen(gen):
                while True:
                    try:
                        item = self.loop.run_until_complete(gen.__anext__())
                    except StopAsyncIteration:
                        return
                    yield _dump(item)
            else:
                for item in gen:
                    yield _dump(item)
        except KliegError:
            raise
        except Exception as exc:
            raise AppError(f"{type(exc).__name__}: {exc}") from exc


def _dump_item(value: Any) -> bytes | KliegError:
    """One item of a batched endpoint's result: its JSON, or the error it stands for."""
    if isinstance(value, KliegError):
        return value
    if isinstance(value, Exception):
        return AppError(f"{type(value).__name__}: {value}")
    try:
        return _dump(value)
    except Exception as exc:  # an item pydantic cannot serialise fails alone
        return AppError(f"{type(exc).__name__}: {exc}")


def _dump(value: Any) -> bytes:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json().encode()
    return pydantic_core.to_json(value)


class Target:
    """The loaded function or class instance of one FunctionSpec."""

    def __init__(self, code_dir: Path, spec: FunctionSpec) -> None:
        self.spec = spec
        self.loop = asyncio.new_event_loop()
        if spec.pickled:
            if spec.module != "__main__":
                import_entry(code_dir, spec.module)
            obj = cloudpickle.loads(base64.b64decode(spec.pickled))
        else:
            obj = _resolve(import_entry(code_dir, spec.module), spec.qualname)
        self.instance: Any = obj() if spec.kind == "cls" else None
        self.endpoints: dict[str, Endpoint] = {}
        for ep in spec.endpoints:
            fn = getattr(self.instance, ep.method) if self.instance is not None else obj
            self.endpoints[normalize_path(ep.path)] = Endpoint(fn, self.loop, ep.batched)

    def _hook(self, name: str) -> None:
        hook = getattr(self.instance, name, None)
        if callable(hook):
            result = hook()
            if inspect.isawaitable(result):
                self.loop.run_until_complete(result)

    def setup(self) -> None:
        self._hook("setup")

    def teardown(self) -> None:
        self._hook("teardown")

    def hints(self) -> list[str] | None:
        """What the instance's ``provide_hints()`` returns now (any iterable of strings: its
        valid hints, the first ``MAX_HINTS``; an invalid one is dropped with a warning on
        stderr); None when it has no such method or it raised (printed on stderr: the runner's
        hints stay as they were)."""
        hook = getattr(self.instance, "provide_hints", None)
        if not callable(hook):
            return None
        try:
            result = hook()
            if inspect.isawaitable(result):
                result = self.loop.run_until_complete(result)
            items = list(result or ())
        except Exception:
            traceback.print_exc()
            return None
        hints: list[str] = []
        for item in items:
            problem = hint_problem(item)
            if problem is not None:
                print(f"provide_hints(): {problem}; ignored", file=sys.stderr)
            elif item not in hints:
                hints.append(item)
        return hints[:MAX_HINTS]

    def endpoint(self, path: str) -> Endpoint:
        endpoint = self.endpoints.get(normalize_path(path))
        if endpoint is None:
            raise NotFoundError(f"no endpoint at {path!r}")
        return endpoint

    def call(self, path: str, body: bytes) -> bytes:
        return self.endpoint(path)(body)
