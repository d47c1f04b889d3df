"""The web console, served by the gateway itself at ``/console``.

The pages are one static shell (``console/index.html``) and its script and style, read from
the package and sent as they are: no build step, nothing from a CDN. The shell holds no tenant
data; the script asks for the caller's key and reads everything through the JSON API with it
(``/apps``, ``/requests``, the per-app OpenAPI documents, the queue routes), so a page shows
exactly what the API lets that key see. ``GET /fleet/stream`` is the one route made for it: the
fleet views as server-sent events, once a second, with each new fleet sample as it is taken.

The script is three modules: ``dom.js`` (elements, the API and SSE over fetch, shared views),
``fleet.js`` (the fleet page) and ``console.js`` (the other pages and the routing).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from klieg.exceptions import NotFoundError
from klieg_platform.gateway import auth, fleet, sse
from klieg_platform.gateway.contract import answers, query
from klieg_platform.gateway.intake import seconds
from klieg_platform.gateway.state import gateway

ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "fleet.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data: blob: http: https:; "
        "media-src 'self' data: blob: http: https:; connect-src 'self' http: https:; "
        "style-src 'self'; script-src 'self'; frame-ancestors 'none'"
    ),
}
FLEET_EVERY_S = 1.0
FLEET_FOR_S = 60.0
"""How long one fleet stream lasts unless ``for_s`` says otherwise (at most ``FLEET_MOST_S``);
the console opens the next one when it ends, as an EventSource would."""
FLEET_MOST_S = 600.0


@functools.cache
def _read(name: str) -> bytes:
    return resources.files("klieg_platform.gateway").joinpath("console", name).read_bytes()


@answers("text/html")
async def page(request: Request) -> Response:
    """The console (every page: the script routes by the URL's fragment)."""
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@answers(", ".join(dict.fromkeys(m.partition(";")[0] for m in ASSETS.values())))
async def asset(request: Request) -> Response:
    """The console's script and style."""
    name = request.path_params["name"]
    if name not in ASSETS:
        raise NotFoundError(f"no console asset {name!r}")
    return Response(_read(name), media_type=ASSETS[name], headers=HEADERS)


@answers("text/event-stream")
@query(for_s={"type": "number", "exclusiveMinimum": 0, "maximum": FLEET_MOST_S})
async def fleet_stream(request: Request) -> Response:
    """SSE, once a second for ``for_s`` seconds (default 60): ``{"at", "runners", "pools",
    "workers"}`` (``runners`` as ``GET /runners`` shows them; ``pools`` and ``workers``, as
    ``GET /pools`` and ``GET /workers`` show them, for an admin tenant only, else null). The first
    event also has ``history``, the last hour's samples (``fleet.samples_for``), and
    ``every_s``, the period they are taken at (``Settings.fleet_sample_s``); a later event has
    ``sample``, each sample taken since, so the charts move while the page is open."""
    caller = auth.caller(request)
    gw = gateway(request)
    raw = request.query_params.get("for_s")
    lasts = FLEET_FOR_S if raw is None else seconds(raw, "for_s", most=FLEET_MOST_S)
    loop = asyncio.get_running_loop()
    until = loop.time() + lasts

    async def events() -> AsyncIterator[bytes]:
        history: list[dict[str, Any]] | None = fleet.samples_for(
            caller, await gw.broker.stats.samples()
        )
        last_at = history[-1]["at"] if history else None
        while True:
            workers = await fleet.fleet_workers(request)
            runners = fleet.visible_runners(caller, fleet.runner_views(workers))
            pools = None
            if caller.admin:
                pools = fleet.pool_views(workers, await gw.broker.queue.depths())
            doc: dict[str, Any] = {
                "at": time.time(), "runners": runners, "pools": pools,
                "workers": workers if caller.admin else None,
            }  # fmt: skip
            if history is not None:  # the first event carries the last hour
                doc["history"], history = history, None
                doc["every_s"] = gw.settings.fleet_sample_s
            else:
                newest = await gw.broker.stats.latest_sample()
                if newest is not None and newest["at"] != last_at:
                    doc["sample"] = fleet.samples_for(caller, [newest])[0]
                    last_at = newest["at"]
            yield sse.event(json.dumps(doc).encode())
            if loop.time() + FLEET_EVERY_S > until:
                return
            await asyncio.sleep(FLEET_EVERY_S)

    return sse.response(events())
