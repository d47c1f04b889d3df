"""steady: a deterministic answer per request, for the fault-injection suite.

POST /{owner}/steady  {"i": 7, "ms": 20}  -> {"i": 7, "square": 49} after ``ms`` milliseconds.
A result is right only for its own request: a duplicate or swapped result shows. With
``"runs": DIR``, each run that got to its answer appends ``i`` to ``DIR/runs.log`` (one line, one
``O_APPEND`` write), so a test can count how often each request ran.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, Field

import klieg

app = klieg.App("steady")


class In(BaseModel):
    i: int
    ms: int = Field(default=20, ge=0, le=10_000)
    runs: str | None = None


class Out(BaseModel):
    i: int
    square: int


@app.function(keep_alive=600, max_concurrency=4, retries=2)
@klieg.endpoint("/")
def steady(req: In) -> Out:
    time.sleep(req.ms / 1000)
    if req.runs is not None:
        fd = os.open(os.path.join(req.runs, "runs.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{req.i}\n".encode())
        finally:
            os.close(fd)
    return Out(i=req.i, square=req.i * req.i)
