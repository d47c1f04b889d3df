"""``klieg.call``: call another app from inside an app, as the tenant of the request being served.

Inside a runner, the worker hands each request a short-lived call token for its tenant and sets
``KLIEG_GATEWAY_URL``; ``call`` sends the token as ``Authorization: Bearer <token>`` to the
gateway's run route, so the nested request is authorised, queued and billed as the caller's
tenant (an app private to another tenant is not found). Outside a runner it uses the same
``KLIEG_URL`` / ``KLIEG_KEY`` as :class:`klieg.Client`, so scripts can call it too.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from pydantic import BaseModel

from klieg._runtime import context
from klieg.client import _Api, raise_for_error


def _request(
    target: str, input: dict[str, Any] | BaseModel | None
) -> tuple[str, dict[str, str], Any]:
    """(url, headers, JSON body) of a call to ``target`` from here."""
    body = input.model_dump(mode="json") if isinstance(input, BaseModel) else (input or {})
    token = context.current_token()
    api = _Api(os.environ.get("KLIEG_GATEWAY_URL") if token else None, None)
    headers = {"Authorization": f"Bearer {token}"} if token else api.headers
    return api.url + api.run_path(target), headers, body


def call(
    target: str,
    input: dict[str, Any] | BaseModel | None = None,
    *,
    timeout: float = 600.0,
) -> Any:
    """Run ``owner/app[@ref][/path]`` with ``input`` and return its JSON output.

    Inside an endpoint the call runs as the tenant of the request being served; elsewhere with
    ``KLIEG_URL`` / ``KLIEG_KEY``. Errors are the typed ``klieg.KliegError`` subclasses the
    client raises (``NotFoundError``, ``ValidationError``, ``AppError``, ...).

    Example::

        import klieg

        @app.function()
        @klieg.endpoint("/")
        def caption_then_translate(req: In) -> dict[str, str]:
            caption = klieg.call("acme/captioner", {"image_url": req.image_url})
            out = klieg.call("acme/translate", {"text": caption["text"], "to": "fr"})
            return {"caption": out["text"]}
    """
    url, headers, body = _request(target, input)
    response = httpx.post(url, json=body, headers=headers, timeout=timeout)
    raise_for_error(response)
    return response.json()


async def call_async(
    target: str,
    input: dict[str, Any] | BaseModel | None = None,
    *,
    timeout: float = 600.0,
) -> Any:
    """Async twin of :func:`call`, for ``async def`` endpoints.

    Example::

        import asyncio
        import klieg

        @app.function()
        @klieg.endpoint("/")
        async def both(req: In) -> dict[str, Any]:
            a, b = await asyncio.gather(
                klieg.call_async("acme/upscale", {"url": req.url}),
                klieg.call_async("acme/caption", {"url": req.url}),
            )
            return {"upscaled": a, "caption": b}
    """
    url, headers, body = _request(target, input)
    async with httpx.AsyncClient(timeout=timeout) as client:
        response = await client.post(url, json=body, headers=headers)
    raise_for_error(response)
    return response.json()
