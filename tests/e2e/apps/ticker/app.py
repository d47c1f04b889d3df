"""A generator endpoint that ticks slowly and logs each tick, a plain endpoint that logs, and a
GPU function (its pool has no worker on the test platform)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from pydantic import BaseModel

import klieg

app = klieg.App("ticker")


class Ticks(BaseModel):
    n: int = 3
    gap: float = 0.0


@app.function(keep_alive=120)
@klieg.endpoint("/ticks")
def ticks(req: Ticks) -> Iterator[dict[str, int]]:
    for i in range(req.n):
        if i:
            time.sleep(req.gap)
        print(f"tick {i}")
        yield {"tick": i}


@app.function(keep_alive=120)
@klieg.endpoint("/once")
def once(req: Ticks) -> dict[str, int]:
    for i in range(req.n):
        print(f"step {i}")
        time.sleep(req.gap)
    return {"steps": req.n}


@app.function(gpu="H100", keep_alive=120)
@klieg.endpoint("/gpu")
def gpu(req: Ticks) -> dict[str, str]:
    return {"ran": "yes"}
