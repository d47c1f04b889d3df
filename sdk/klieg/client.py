"""HTTP clients for Klieg's inference API: ``Client`` (sync) and ``AsyncClient``.

Both read ``KLIEG_URL`` and ``KLIEG_KEY`` (``id:secret``) by default and raise typed
``klieg.KliegError`` subclasses for error replies.

Example::

    import klieg

    client = klieg.Client()                            # KLIEG_URL, KLIEG_KEY
    out = client.run("local/echo", {"text": "hi"})     # POST /local/echo, waits for the result
    handle = client.submit("local/echo/upper", {"text": "hi"})
    print(client.status(handle.app_id, handle.request_id, with_logs=True)["status"])
    print(client.result(handle.app_id, handle.request_id))
    out = client.subscribe("local/echo", {"text": "hi"}, on_update=print)  # with progress
    for item in client.stream("local/counter", {"n": 3}):                  # generator endpoint
        print(item)

    async with klieg.AsyncClient() as aclient:
        out = await aclient.run("local/echo", {"text": "hi"})
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from klieg.exceptions import InvalidRequestError, KliegError, RequestTimeoutError, from_wire
from klieg.media import File

DEFAULT_URL = "http://127.0.0.1:8000"
_C = TypeVar("_C", bound="Client")
_A = TypeVar("_A", bound="AsyncClient")
StatusCallback = Callable[[dict[str, Any]], None]


_TAG = re.compile(r"<[^>]*>")
_SNIPPET_CHARS = 200


def _not_json(response: httpx.Response) -> str:
    """What a reply that is not JSON said, on one line: ``HTTP 502 Bad Gateway: <its text>``
    (HTML tags dropped, cut to a few hundred characters), for errors from proxies and other
    servers that are not a Klieg gateway."""
    text = " ".join(_TAG.sub(" ", response.text).split())
    if len(text) > _SNIPPET_CHARS:
        text = text[:_SNIPPET_CHARS] + "..."
    head = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    return f"{head}: {text}" if text else head


def raise_for_error(response: httpx.Response) -> None:
    """Raise the typed Klieg error a non-2xx response carries (``KliegError`` with the status
    and a summary of the text when the body is not JSON)."""
    if response.is_success:
        return
    try:
        body: Any = response.json()
    except ValueError:
        body = _not_json(response)
    raise from_wire(body, response.status_code)


def _response_json(response: httpx.Response) -> Any:
    """The JSON body of a successful reply; the typed error of a failed one. ``KliegError`` when
    a 2xx body is not JSON (the URL names a server that is not a Klieg gateway)."""
    raise_for_error(response)
    try:
        return response.json()
    except ValueError:
        raise KliegError(f"the reply is not JSON: {_not_json(response)}") from None


def split_app_id(app_id: str) -> tuple[str, str, str]:
    """``owner/app[@ref][/path...]`` -> (owner, app[@ref], path). A workflow's id,
    ``workflows/owner/name[@ref]``, gives (``workflows/owner``, name[@ref], "").
    ``InvalidRequestError`` when the owner or the app is missing."""
    if app_id.strip("/").startswith("workflows/"):
        owner, app, path = split_app_id(app_id.strip("/").removeprefix("workflows/"))
        return f"workflows/{owner}", app, path
    parts = app_id.strip("/").split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise InvalidRequestError(f"app id must be owner/app[/path], got {app_id!r}")
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""


LONG_POLL_S = 30.0
"""How long one status poll of ``Client.wait`` asks the gateway to wait."""


@dataclass(frozen=True)
class RequestHandle:
    """A submitted request: where to poll it."""

    app_id: str
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str


class _SseParser:
    """Incremental server-sent-events parser: ``feed`` one line, get the events it completes."""

    def __init__(self) -> None:
        self.name = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> Iterator[Any]:
        if line.startswith("event:"):
            self.name = line[6:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].strip())
        elif not line and self.data:
            name, data = self.name, "\n".join(self.data)
            self.name, self.data = "message", []
            yield _sse_item(name, data)

    def end(self) -> Iterator[Any]:
        return self.feed("")


def _sse_item(name: str, data: str) -> Any:
    item = json.loads(data)
    if name == "error":
        raise from_wire(item, 500)
    return item


def _events(lines: Iterator[str]) -> Iterator[Any]:
    parser = _SseParser()
    for line in lines:
        yield from parser.feed(line)
    yield from parser.end()


async def _aevents(lines: AsyncIterator[str]) -> AsyncIterator[Any]:
    parser = _SseParser()
    async for line in lines:
        for item in parser.feed(line):
            yield item
    for item in parser.end():
        yield item


def _upload_source(
    data: bytes | str | os.PathLike[str], file_name: str | None
) -> tuple[str, bytes]:
    if isinstance(data, bytes):
        return file_name or "upload.bin", data
    path = Path(data)
    return file_name or path.name, path.read_bytes()


class _Api:
    """URLs and headers shared by the sync and async clients."""

    def __init__(self, url: str | None, key: str | None) -> None:
        self.url = (url or os.environ.get("KLIEG_URL") or DEFAULT_URL).rstrip("/")
        self.key = key if key is not None else os.environ.get("KLIEG_KEY")
        self.headers = {"Authorization": f"Key {self.key}"} if self.key else {}

    @staticmethod
    def run_path(app_id: str, suffix: str = "") -> str:
        owner, app, path = split_app_id(app_id)
        return "/" + "/".join(p for p in (owner, app, path.strip("/"), suffix) if p)

    @staticmethod
    def request_path(app_id: str, request_id: str, suffix: str = "") -> str:
        owner, app, _ = split_app_id(app_id)
        return f"/queue/{owner}/{app}/requests/{request_id}{suffix}"

    @staticmethod
    def status_params(with_logs: bool, wait_s: float) -> dict[str, str]:
        params = {"logs": "1" if with_logs else "0"}
        if wait_s > 0:
            params["wait_s"] = f"{wait_s:g}"
        return params

    @staticmethod
    def submit_params(webhook_url: str | None) -> dict[str, str]:
        return {"fal_webhook": webhook_url} if webhook_url else {}

    @staticmethod
    def request_headers(
        request_timeout: float | None, priority: str | None, hint: str | None = None
    ) -> dict[str, str]:
        """The fal headers of a call: its deadline (``X-Fal-Request-Timeout``), its queue
        priority (``X-Fal-Queue-Priority``: ``"normal"`` or ``"low"``) and its runner hint
        (``X-Fal-Runner-Hint``)."""
        headers = {"X-Fal-Request-Timeout": str(request_timeout)} if request_timeout else {}
        if priority is not None:
            headers["X-Fal-Queue-Priority"] = priority
        if hint is not None:
            headers["X-Fal-Runner-Hint"] = hint
        return headers

    @staticmethod
    def handle(app_id: str, body: dict[str, Any]) -> RequestHandle:
        owner, app, _ = split_app_id(app_id)
        return RequestHandle(
            app_id=f"{owner}/{app}",
            request_id=body["request_id"],
            status_url=body["status_url"],
            response_url=body["response_url"],
            cancel_url=body["cancel_url"],
        )


class Client:
    """Sync client. ``key`` is ``"<key_id>:<secret>"`` (as printed by ``klieg keys create``)."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 600.0,
        verify: str | bool = True,
    ) -> None:
        self.api = _Api(url, key)
        self.url, self.key = self.api.url, self.api.key
        self.http = httpx.Client(
            base_url=self.url, headers=self.api.headers, timeout=timeout, verify=verify
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        return _response_json(response)

    def run(
        self,
        app_id: str,
        arguments: dict[str, Any] | None = None,
        *,
        request_timeout: float | None = None,
        priority: str | None = None,
        hint: str | None = None,
    ) -> Any:
        """Call an endpoint and wait for its output. ``priority``: ``"low"`` queues it behind
        the caller's normal requests of the same function (``X-Fal-Queue-Priority``); ``hint``:
        a runner hint (``X-Fal-Runner-Hint``): a runner whose app's ``provide_hints()``
        reports it is preferred (a LoRA it has loaded, say), any other serves it otherwise.

        Example::

            out = client.run("local/digits", {"prompt": "a 7"}, priority="low", hint="lora-7")
        """
        return self._json(
            self.http.post(
                self.api.run_path(app_id),
                json=arguments or {},
                headers=self.api.request_headers(request_timeout, priority, hint),
            )
        )

    def submit(
        self,
        app_id: str,
        arguments: dict[str, Any] | None = None,
        *,
        webhook_url: str | None = None,
        request_timeout: float | None = None,
        priority: str | None = None,
        hint: str | None = None,
    ) -> RequestHandle:
        """Queue a request; follow it with ``status``, ``result``, ``wait`` or ``cancel``.
        ``priority`` and ``hint`` as in ``run``."""
        owner, app, path = split_app_id(app_id)
        body = self._json(
            self.http.post(
                "/queue/" + "/".join(p for p in (owner, app, path.strip("/")) if p),
                json=arguments or {},
                params=self.api.submit_params(webhook_url),
                headers=self.api.request_headers(request_timeout, priority, hint),
            )
        )
        return self.api.handle(app_id, body)

    def status(
        self, app_id: str, request_id: str, *, with_logs: bool = False, wait_s: float = 0.0
    ) -> dict[str, Any]:
        """IN_QUEUE (with queue_position), IN_PROGRESS or COMPLETED, with logs if asked.
        ``wait_s`` (at most 60): the server answers once the request is COMPLETED or that long
        has passed (a long poll)."""
        path = self.api.request_path(app_id, request_id, "/status")
        params = self.api.status_params(with_logs, wait_s)
        out: dict[str, Any] = self._json(self.http.get(path, params=params, timeout=wait_s + 30))
        return out

    def result(self, app_id: str, request_id: str) -> Any:
        return self._json(self.http.get(self.api.request_path(app_id, request_id)))

    def cancel(self, app_id: str, request_id: str) -> None:
        """Cancel a queued request, or interrupt a running one."""
        raise_for_error(self.http.put(self.api.request_path(app_id, request_id, "/cancel")))

    def upload_file(
        self,
        data: bytes | str | os.PathLike[str],
        content_type: str | None = None,
        file_name: str | None = None,
    ) -> File:
        """Upload bytes (or the file at a path); the returned File's URL can go in a request."""
        name, raw = _upload_source(data, file_name)
        kind = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        headers = {"Content-Type": kind, "X-Klieg-File-Name": name}
        body = self._json(self.http.post("/files/upload", content=raw, headers=headers))
        return File.model_validate(body)

    def logs(self, request_id: str) -> list[dict[str, Any]]:
        """A request's log lines so far, by id alone."""
        return list(self.request_status(request_id, with_logs=True).get("logs") or [])

    def request_status(self, request_id: str, *, with_logs: bool = False) -> dict[str, Any]:
        """A request's status document by id alone (its logs so far with ``with_logs``)."""
        params = {"logs": "1" if with_logs else "0"}
        out: dict[str, Any] = self._json(
            self.http.get(f"/requests/{request_id}/status", params=params)
        )
        return out

    def requests(
        self,
        app: str | None = None,
        *,
        status: str | None = None,
        since: float | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> dict[str, Any]:
        """The caller's requests, newest first: ``{"requests": [...], "next": cursor}``.
        ``status``: IN_QUEUE, IN_PROGRESS, COMPLETED, ok, error or cancelled; ``since``: unix
        seconds; ``after``: the ``next`` of the previous page."""
        params: dict[str, str] = {"limit": str(limit)}
        for name, value in (("app", app), ("status", status), ("after", after)):
            if value is not None:
                params[name] = value
        if since is not None:
            params["since"] = f"{since:.3f}"
        page: dict[str, Any] = self._json(self.http.get("/requests", params=params))
        return page

    def request(self, request_id: str, *, with_output: bool = False) -> dict[str, Any]:
        """One of the caller's requests: its history row, input, logs, error and result URL;
        ``with_output`` adds ``output``, the result of one that ended ok (else None)."""
        found: dict[str, Any] = self._json(self.http.get(f"/requests/{request_id}"))
        if with_output:
            ok = found["outcome"] == "ok"
            found["output"] = self._json(self.http.get(found["response_url"])) if ok else None
        return found

    def wait(self, handle: RequestHandle, *, timeout: float = 600.0, interval: float = 0.1) -> Any:
        """Wait until the request completes, with long polls of its status; return its result
        (or raise its error). ``interval``: the least time between two polls."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            asked = time.monotonic()
            status = self.status(handle.app_id, handle.request_id, wait_s=min(left, LONG_POLL_S))
            if status["status"] == "COMPLETED":
                return self.result(handle.app_id, handle.request_id)
            time.sleep(max(0.0, interval - (time.monotonic() - asked)))
        raise RequestTimeoutError(f"request {handle.request_id} not done within {timeout}s")

    def subscribe(
        self,
        app_id: str,
        arguments: dict[str, Any] | None = None,
        *,
        with_logs: bool = False,
        on_update: StatusCallback | None = None,
        priority: str | None = None,
    ) -> Any:
        """Submit, report each status change (and new log lines) to ``on_update``, return the
        result. ``priority`` as in ``run``."""
        handle = self.submit(app_id, arguments, priority=priority)
        path = self.api.request_path(handle.app_id, handle.request_id, "/status/stream")
        params = {"logs": "1" if with_logs else "0"}
        with self.http.stream("GET", path, params=params, timeout=None) as r:
            if not r.is_success:
                r.read()
                raise_for_error(r)
            for update in _events(r.iter_lines()):
                if on_update is not None:
                    on_update(update)
        return self.result(handle.app_id, handle.request_id)

    def stream(
        self,
        app_id: str,
        arguments: dict[str, Any] | None = None,
        *,
        on_request: Callable[[str], None] | None = None,
        priority: str | None = None,
    ) -> Iterator[Any]:
        """The items of a generator endpoint as they are produced; ``on_request`` gets the
        request's id as soon as the gateway has queued it (before the first item). ``priority``
        as in ``run``."""
        path = self.api.run_path(app_id, "stream")
        headers = self.api.request_headers(None, priority)
        with self.http.stream(
            "POST", path, json=arguments or {}, headers=headers, timeout=None
        ) as r:
            if not r.is_success:
                r.read()
                raise_for_error(r)
            if on_request is not None and (rid := r.headers.get("x-fal-request-id")):
                on_request(rid)
            yield from _events(r.iter_lines())

    def call(
        self,
        app_id: str,
        arguments: dict[str, Any] | None = None,
        *,
        request_timeout: float | None = None,
        priority: str | None = None,
        hint: str | None = None,
    ) -> Iterator[Any]:
        """Call any endpoint and yield what it produces: each item of a generator endpoint as
        it is produced, or the one output of any other endpoint (``run``'s).

        Example::

            for item in client.call("local/counter", {"n": 3}):   # 0, 1, 2 as they come
                print(item)
        """
        headers = {
            "Accept": "text/event-stream, application/json",
            **self.api.request_headers(request_timeout, priority, hint),
        }
        path = self.api.run_path(app_id)
        with self.http.stream("POST", path, json=arguments or {}, headers=headers) as r:
            if r.headers.get("content-type", "").startswith("text/event-stream"):
                yield from _events(r.iter_lines())
                return
            r.read()
            yield _response_json(r)

    def follow(
        self, handle: RequestHandle, on_log: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Follow a request until it completes, giving each of its log lines to ``on_log`` as
        it is logged; its last status document."""
        path = self.api.request_path(handle.app_id, handle.request_id, "/status/stream")
        last: dict[str, Any] = {}
        with self.http.stream("GET", path, params={"logs": "1"}, timeout=None) as r:
            if not r.is_success:
                r.read()
                raise_for_error(r)
            for update in _events(r.iter_lines()):
                for line in update.get("logs") or ():
                    on_log(line)
                last = update
        return last


class AsyncClient:
    """Async twin of :class:`Client` (same methods, awaited; ``stream`` is an async iterator)."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 600.0,
        verify: str | bool = True,
    ) -> None:
        self.api = _Api(url, key)
        self.http = httpx.AsyncClient(
            base_url=self.api.url, headers=self.api.headers, timeout=timeout, verify=verify
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self: _A) -> _A:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        return _response_json(response)

    async def run(
        self,
        app_id: str,
        arguments: dict[str, Any] | None = None,
        *,
        request_timeout: float | None = None,
        priority: str | None = None,
        hint: str | None = None,
    ) -> Any:
        r = await self.http.post(
            self.api.run_path(app_id),
            json=arguments or {},
            headers=self.api.request_headers(request_timeout, priority, hint),
        )
        return self._json(r)

    async def submit(
        self,
        app_id: str,
        arguments: dict[str, Any] | None = None,
        *,
        webhook_url: str | None = None,
        request_timeout: float | None = None,
        priority: str | None = None,
        hint: str | None = None,
    ) -> RequestHandle:
        owner, app, path = split_app_id(app_id)
        r = await self.http.post(
            "/queue/" + "/".join(p for p in (owner, app, path.strip("/")) if p),
            json=arguments or {},
            params=self.api.submit_params(webhook_url),
            headers=self.api.request_headers(request_timeout, priority, hint),
        )
        return self.api.handle(app_id, self._json(r))

    async def status(
        self, app_id: str, request_id: str, *, with_logs: bool = False, wait_s: float = 0.0
    ) -> dict[str, Any]:
        """As ``Client.status``."""
        path = self.api.request_path(app_id, request_id, "/status")
        params = self.api.status_params(with_logs, wait_s)
        r = await self.http.get(path, params=params, timeout=wait_s + 30)
        out: dict[str, Any] = self._json(r)
        return out

    async def result(self, app_id: str, request_id: str) -> Any:
        return self._json(await self.http.get(self.api.request_path(app_id, request_id)))

    async def cancel(self, app_id: str, request_id: str) -> None:
        r = await self.http.put(self.api.request_path(app_id, request_id, "/cancel"))
        raise_for_error(r)

    async def subscribe(
        self,
        app_id: str,
        arguments: dict[str, Any] | None = None,
        *,
        with_logs: bool = False,
        on_update: StatusCallback | None = None,
    ) -> Any:
        handle = await self.submit(app_id, arguments)
        path = self.api.request_path(handle.app_id, handle.request_id, "/status/stream")
        params = {"logs": "1" if with_logs else "0"}
        async with self.http.stream("GET", path, params=params, timeout=None) as r:
            if not r.is_success:
                await r.aread()
                raise_for_error(r)
            async for update in _aevents(r.aiter_lines()):
                if on_update is not None:
                    on_update(update)
        return await self.result(handle.app_id, handle.request_id)

    async def stream(
        self,
        app_id: str,
        arguments: dict[str, Any] | None = None,
        *,
        priority: str | None = None,
    ) -> AsyncIterator[Any]:
        path = self.api.run_path(app_id, "stream")
        headers = self.api.request_headers(None, priority)
        async with self.http.stream(
            "POST", path, json=arguments or {}, headers=headers, timeout=None
        ) as r:
            if not r.is_success:
                await r.aread()
                raise_for_error(r)
            async for item in _aevents(r.aiter_lines()):
                yield item
