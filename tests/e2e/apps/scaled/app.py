"""A function whose scaling the tests change live (``klieg apps scale``): no runner kept warm by
its decorator, idle ones stopped after two seconds."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

import klieg

app = klieg.App("scaled")


class Work(BaseModel):
    seconds: float = 0.0


@app.function(keep_alive=2, max_concurrency=2)
@klieg.endpoint("/")
def work(req: Work) -> dict[str, int]:
    time.sleep(req.seconds)
    return {"pid": os.getpid()}
