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
