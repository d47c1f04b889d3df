"""steady: a deterministic answer per request, for the fault-injection suite.

POST /{owner}/steady  {"i": 7, "ms": 20}  -> {"i": 7, "square": 49} after ``ms`` milliseconds.
A result is right only for its own request: a duplicate or swapped result shows.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

import klieg

app = klieg.App("steady")


class In(BaseModel):
    i: int
    ms: int = Field(default=20, ge=0, le=10_000)


class Out(BaseModel):
    i: int
    square: int


@app.function(keep_alive=600, max_concurrency=4, retries=2)
@klieg.endpoint("/")
def steady(req: In) -> Out:
    time.sleep(req.ms / 1000)
    return Out(i=req.i, square=req.i * req.i)
