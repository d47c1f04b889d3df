"""Calls another app with ``klieg.call`` as the tenant of the request it serves: ``/`` returns
the target's output, ``/error`` the typed error it raised, ``/async`` uses ``klieg.call_async``
and ``/batch`` calls from a batched endpoint (one call per item)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import klieg

app = klieg.App("caller")


class In(BaseModel):
    target: str = "local/echo2"
    input: dict[str, Any] = {}


def _outcome(req: In) -> dict[str, Any]:
    try:
        return {"got": klieg.call(req.target, req.input, timeout=60)}
    except klieg.KliegError as exc:
        return {"error": exc.error_type, "status": exc.status_code, "detail": str(exc.detail)}


@app.cls(keep_alive=120)
class Caller:
    @klieg.endpoint("/")
    def call(self, req: In) -> dict[str, Any]:
        return {"got": klieg.call(req.target, req.input, timeout=60)}

    @klieg.endpoint("/error")
    def error(self, req: In) -> dict[str, Any]:
        return _outcome(req)

    @klieg.endpoint("/async")
    async def call_async(self, req: In) -> dict[str, Any]:
        return {"got": await klieg.call_async(req.target, req.input, timeout=60)}

    @klieg.endpoint("/batch", max_batch_size=4, batch_wait_ms=300)
    def batch(self, reqs: list[In]) -> list[dict[str, Any]]:
        return [{**_outcome(req), "batch_size": len(reqs)} for req in reqs]
