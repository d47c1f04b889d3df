"""A unit of work that says when it started, for scheduling-order tests."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

import klieg

app = klieg.App("sched")


class Work(BaseModel):
    seconds: float = 0.1
    tag: str = ""


@app.function(max_concurrency=4, keep_alive=300)
@klieg.endpoint("/")
def work(req: Work) -> dict[str, object]:
    started = time.time()
    time.sleep(req.seconds)
    return {"tag": req.tag, "started": started, "ended": time.time(), "pid": os.getpid()}


@app.function(keep_alive=300)
@klieg.endpoint("/solo")
def solo(req: Work) -> dict[str, object]:
    return {"tag": req.tag, "pid": os.getpid(), "started": time.time()}
