"""Three apps of one tenant for the tenant isolation tests, which set who may call each. Every
endpoint prints the text it is given (so the request's logs hold it) and answers with that text
and a file holding it (so the answer carries a signed media URL)."""

from __future__ import annotations

import time

from pydantic import BaseModel

import klieg

private = klieg.App("iso-private")
shared = klieg.App("iso-shared")
public = klieg.App("iso-public")


class In(BaseModel):
    text: str
    seconds: float = 0.0


class Out(BaseModel):
    app: str
    path: str
    text: str
    note: klieg.File


def answer(app: str, path: str, req: In) -> Out:
    print(f"{app}{path} got {req.text}")
    time.sleep(req.seconds)
    note = klieg.File.from_bytes(f"{app}:{req.text}".encode(), "text/plain", "note.txt")
    return Out(app=app, path=path, text=req.text, note=note)


@private.cls(keep_alive=120, max_concurrency=2)
class Private:
    @klieg.endpoint("/")
    def root(self, req: In) -> Out:
        return answer("iso-private", "/", req)

    @klieg.endpoint("/again")
    def again(self, req: In) -> Out:
        return answer("iso-private", "/again", req)


@shared.cls(keep_alive=120, max_concurrency=2)
class Shared:
    @klieg.endpoint("/")
    def root(self, req: In) -> Out:
        return answer("iso-shared", "/", req)

    @klieg.endpoint("/again")
    def again(self, req: In) -> Out:
        return answer("iso-shared", "/again", req)


@public.cls(keep_alive=120, max_concurrency=2)
class Public:
    @klieg.endpoint("/")
    def root(self, req: In) -> Out:
        return answer("iso-public", "/", req)

    @klieg.endpoint("/again")
    def again(self, req: In) -> Out:
        return answer("iso-public", "/again", req)
