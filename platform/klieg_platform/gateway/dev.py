"""Dev sessions (``klieg run``): an app served from the author's folder, reloaded on each save.

POST   /apps/{name}/dev[?session=S]   JSON {spec, archive} -> NDJSON progress, as a deploy:
                                      a dev revision behind the session's alias ``S`` (a new
                                      ``dev-<8 hex>`` when none is given)
PUT    /apps/{name}/dev/{session}     renew: the session's revision lives ``dev_ttl_s`` more
DELETE /apps/{name}/dev/{session}     end: its alias goes, its revision is retired, and the
                                      app too when the session made it

A session moves no alias of the app's own: it is served at ``POST /{owner}/{app}@{session}``.
Each save deploys the code again (the env is reused while the requirements are unchanged: the
lock is not resolved again) and retires the previous dev revision. A session whose CLI stops
renewing it is ended by the collector once its revision expires (``collector.py``).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from klieg.exceptions import InvalidRequestError, NotFoundError
from klieg_platform.gateway import auth, bodies
from klieg_platform.gateway.admin import (
    MAX_DEPLOY_BYTES,
    alias_moved,
    deploy_body,
    deploy_response,
    owned_app,
)
from klieg_platform.gateway.contract import accepts, answers, query
from klieg_platform.gateway.state import gateway

_SESSION = re.compile(r"dev-[0-9a-f]{8}")


def _session(value: str) -> str:
    if not _SESSION.fullmatch(value):
        raise InvalidRequestError(f"not a dev session: {value!r} (dev- and 8 hex digits)")
    return value


@answers("application/x-ndjson")
@query(session={"type": "string", "pattern": f"^(?:{_SESSION.pattern})?$"})
@accepts(bodies.Deploy, limit=MAX_DEPLOY_BYTES)
async def start(request: Request, body: bodies.Deploy) -> Response:
    """Deploy the body as the session's dev revision (a new session without ``session``)."""
    gw = gateway(request)
    tenant = auth.caller(request)
    given = request.query_params.get("session")
    session = _session(given) if given else f"dev-{secrets.token_hex(4)}"
    spec, code = deploy_body(request, body)
    return deploy_response(gw, tenant, spec, code, alias=session, dev_ttl_s=gw.settings.dev_ttl_s)


@answers(bodies.DevRenewed)
async def renew(request: Request) -> Response:
    """Push the session's expiry ``Settings.dev_ttl_s`` on; 404 when it has ended (or expired).
    The reply says the time to live, so the CLI renews often enough whatever it is."""
    gw = gateway(request)
    app = await owned_app(gw, auth.caller(request), request.path_params["name"])
    session = _session(request.path_params["session"])
    ttl_s = gw.settings.dev_ttl_s
    expires_at = time.time() + ttl_s

    def renewed() -> str | None:
        current = gw.registry.get_alias(app, session)
        if current is None or not gw.registry.renew_revision(current, expires_at):
            return None
        return current

    revision = await asyncio.to_thread(renewed)
    if revision is None:
        raise NotFoundError(f"dev session {session} of {app.name} has ended")
    return JSONResponse(
        {"session": session, "revision": revision, "expires_at": expires_at, "ttl_s": ttl_s}
    )


@answers(bodies.DevEnded)
async def end(request: Request) -> Response:
    """End the session: what it made goes (see the module's contract)."""
    gw = gateway(request)
    tenant = auth.caller(request)
    app = await owned_app(gw, tenant, request.path_params["name"])
    session = _session(request.path_params["session"])
    retired = await asyncio.to_thread(gw.registry.end_session, app, session)
    await alias_moved(gw, tenant.name, app.name)
    return JSONResponse({"session": session, "retired": retired})
