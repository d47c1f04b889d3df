"""A batched endpoint that reports how it was called: each result names its batch's size and
the runner's pid. ``fail`` returns that item as an error; ``boom`` makes the whole call raise
(so the runner retries each request alone); ``sleep`` delays the call; ``crash`` kills the
runner."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

import klieg

app = klieg.App("batcher")


class In(BaseModel):
    value: int
    fail: bool = False
    boom: bool = False
    sleep: float = 0.0
    crash: bool = False


class Out(BaseModel):
    doubled: int
    batch_size: int
    pid: int


@app.cls(max_batch_size=4, batch_wait_ms=300, keep_alive=120)
class Batcher:
    @klieg.endpoint("/")
    def double(self, reqs: list[In]) -> list[Out | Exception]:
        print(f"batch of {len(reqs)}: {[r.value for r in reqs]}")
        if any(r.crash for r in reqs):
            os._exit(3)
        if any(r.boom for r in reqs):
            raise RuntimeError("boom in the batch")
        time.sleep(max(r.sleep for r in reqs))
        return [
            ValueError(f"value {r.value} refused")
            if r.fail
            else Out(doubled=2 * r.value, batch_size=len(reqs), pid=os.getpid())
            for r in reqs
        ]

    @klieg.endpoint("/single")
    def single(self, req: In) -> Out:
        return Out(doubled=2 * req.value, batch_size=0, pid=os.getpid())
