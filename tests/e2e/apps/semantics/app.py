"""Endpoints for request semantics: streaming, slow work, crashes, large bodies."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

import klieg

app = klieg.App("semantics")


class N(BaseModel):
    n: float = 1


class Blob(BaseModel):
    data: str
    repeat: int = 1


@app.function(max_concurrency=2, keep_alive=120)
@klieg.endpoint("/count")
def count(req: N) -> Iterator[dict[str, int]]:
    for i in range(int(req.n)):
        print(f"counting {i}")
        time.sleep(0.05)
        if i == 99:
            raise ValueError("too far")
        yield {"i": i}


@app.function(max_concurrency=2, keep_alive=120)
@klieg.endpoint("/sleep")
def sleep(req: N) -> dict[str, int]:
    print("sleeping")
    time.sleep(req.n)
    return {"pid": os.getpid()}


@app.cls(keep_alive=120)
class Fragile:
    @klieg.endpoint("/crash")
    def crash(self, req: N) -> dict[str, int]:
        os.kill(os.getpid(), signal.SIGSEGV)
        return {"pid": os.getpid()}

    @klieg.endpoint("/pid")
    def pid(self, req: N) -> dict[str, int]:
        return {"pid": os.getpid()}


@app.function(retries=1, keep_alive=120)
@klieg.endpoint("/crash-once")
def crash_once(req: N) -> dict[str, int]:
    marker = Path(os.environ["KLIEG_HOME"]) / "crashed-once"
    if not marker.exists():
        marker.write_text("1")
        os.kill(os.getpid(), signal.SIGKILL)
    return {"pid": os.getpid()}


@app.function(keep_alive=120)
@klieg.endpoint("/blob")
def blob(req: Blob) -> dict[str, object]:
    return {"length": len(req.data), "data": req.data * req.repeat}
