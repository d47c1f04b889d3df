"""Sleeps for the requested time and reports its runner pid; used for queue states."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

import klieg

app = klieg.App("slow")


class In(BaseModel):
    seconds: float = 0.5


@app.function(max_concurrency=4, keep_alive=60)
@klieg.endpoint("/")
def sleep(req: In) -> dict[str, float]:
    print(f"sleeping {req.seconds}s")
    time.sleep(req.seconds)
    return {"slept": req.seconds, "pid": os.getpid()}


@app.function(request_timeout=1.0)
@klieg.endpoint("/capped")
def capped(req: In) -> dict[str, float]:
    time.sleep(req.seconds)
    return {"slept": req.seconds, "pid": os.getpid()}


@app.cls(startup_timeout=1.0)
class SlowStart:
    def setup(self) -> None:
        time.sleep(5)

    @klieg.endpoint("/slowstart")
    def run(self, req: In) -> dict[str, float]:
        return {"slept": 0.0}
