"""HTTP client for Klieg's inference API (sync). Reads ``KLIEG_URL`` and ``KLIEG_KEY`` by default.

Example::

    import klieg

    client = klieg.Client()                       # KLIEG_URL, KLIEG_KEY (id:secret)
    out = client.run("me/echo", {"text": "hi"})   # POST /me/echo, waits for the result
    handle = client.submit("me/echo/upper", {"text": "hi"})
    print(client.status(handle.app_id, handle.request_id)["status"])
    print(client.result(handle.app_id, handle.request_id))
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from klieg.exceptions import RequestTimeoutError, from_wire

DEFAULT_URL = "http://127.0.0.1:8000"
_C = TypeVar("_C", bound="Client")


def raise_for_error(response: httpx.Response) -> None:
    """Raise the typed Klieg error a non-2xx response carries."""
    if response.is_success:
        return
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    raise from_wire(body, response.status_code)


def split_app_id(app_id: str) -> tuple[str, str, str]:
    """``owner/app[@ref][/path...]`` -> (owner, app[@ref], path)."""
    parts = app_id.strip("/").split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"app id must be owner/app[/path], got {app_id!r}")
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""


@dataclass(frozen=True)
class RequestHandle:
    """A submitted request: where to poll it."""

    app_id: str
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str


class Client:
    """Sync client. ``key`` is ``"<key_id>:<secret>"`` (as printed by ``klieg keys create``)."""

    def __init__(
        self, url: str | None = None, key: str | None = None, *, timeout: float = 600.0
    ) -> None:
        self.url = (url or os.environ.get("KLIEG_URL") or DEFAULT_URL).rstrip("/")
        self.key = key if key is not None else os.environ.get("KLIEG_KEY")
        headers = {"Authorization": f"Key {self.key}"} if self.key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, app_id: str, arguments: dict[str, Any] | None = None) -> Any:
        """Call an endpoint and wait for its output."""
        owner, app, path = split_app_id(app_id)
        r = self.http.post(f"/{owner}/{app}/{path}".rstrip("/"), json=arguments or {})
        raise_for_error(r)
        return r.json()

    def submit(self, app_id: str, arguments: dict[str, Any] | None = None) -> RequestHandle:
        """Queue a request; poll it with ``status`` / ``result``."""
        owner, app, path = split_app_id(app_id)
        r = self.http.post(f"/queue/{owner}/{app}/{path}".rstrip("/"), json=arguments or {})
        raise_for_error(r)
        body = r.json()
        return RequestHandle(
            app_id=f"{owner}/{app}",
            request_id=body["request_id"],
            status_url=body["status_url"],
            response_url=body["response_url"],
            cancel_url=body["cancel_url"],
        )

    def _request_url(self, app_id: str, request_id: str) -> str:
        owner, app, _ = split_app_id(app_id)
        return f"/queue/{owner}/{app}/requests/{request_id}"

    def status(self, app_id: str, request_id: str, *, with_logs: bool = False) -> dict[str, Any]:
        r = self.http.get(
            self._request_url(app_id, request_id) + "/status",
            params={"logs": "1" if with_logs else "0"},
        )
        raise_for_error(r)
        body: dict[str, Any] = r.json()
        return body

    def result(self, app_id: str, request_id: str) -> Any:
        r = self.http.get(self._request_url(app_id, request_id))
        raise_for_error(r)
        return r.json()

    def cancel(self, app_id: str, request_id: str) -> None:
        r = self.http.put(self._request_url(app_id, request_id) + "/cancel")
        raise_for_error(r)

    def wait(self, handle: RequestHandle, *, timeout: float = 600.0, interval: float = 0.1) -> Any:
        """Poll until the request completes; return its result (or raise its error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status(handle.app_id, handle.request_id)["status"] == "COMPLETED":
                return self.result(handle.app_id, handle.request_id)
            time.sleep(interval)
        raise RequestTimeoutError(f"request {handle.request_id} not done within {timeout}s")
