"""What the fal-client compatibility tests call: a logging endpoint, a generator, a slow
endpoint to cancel, and one that raises.

POST /{owner}/falcompat          {"text": "hi", "seconds": 0}  -> {"text": "hi", "index": 0}
POST /{owner}/falcompat/stream   {"n": 3}  -> items {"text": "item 0", "index": 0}, ...
POST /{owner}/falcompat/slow     {"seconds": 5}  -> {"text": "slept 5.0", "index": 0}
POST /{owner}/falcompat/fail     {"text": "x"}  -> AppError
POST /{owner}/falcompat/lora     {"lora": "a", "seconds": 0}  -> {"lora": "a", "pid": ...,
                                 "started": ..., "ended": ...}; its runner then reports "a" as
                                 a runner hint (``provide_hints``)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from pydantic import BaseModel, Field

import klieg

app = klieg.App("falcompat")


class In(BaseModel):
    text: str = "hi"
    seconds: float = Field(0.0, ge=0, le=60)


class StreamIn(BaseModel):
    n: int = Field(3, ge=0, le=100)


class Out(BaseModel):
    text: str
    index: int = 0


@app.function(keep_alive=300, max_concurrency=2)
@klieg.endpoint("/")
def hello(req: In) -> Out:
    print(f"falcompat saw {req.text!r}", flush=True)
    time.sleep(req.seconds)
    return Out(text=req.text)


@app.function(keep_alive=300)
@klieg.endpoint("/stream")
def stream(req: StreamIn) -> Iterator[Out]:
    for i in range(req.n):
        time.sleep(0.05)
        yield Out(text=f"item {i}", index=i)


@app.function(keep_alive=300, max_concurrency=4)
@klieg.endpoint("/slow")
def slow(req: In) -> Out:
    print(f"sleeping {req.seconds}s", flush=True)
    time.sleep(req.seconds)
    return Out(text=f"slept {req.seconds}")


class LoraIn(BaseModel):
    lora: str = ""
    seconds: float = Field(0.0, ge=0, le=60)


@app.cls(keep_alive=300, max_concurrency=2)
class Loras:
    def setup(self) -> None:
        self.loaded: list[str] = []

    def provide_hints(self) -> list[str]:
        return list(self.loaded)

    @klieg.endpoint("/lora")
    def lora(self, req: LoraIn) -> dict[str, object]:
        started = time.time()
        if req.lora and req.lora not in self.loaded:
            self.loaded.append(req.lora)
        time.sleep(req.seconds)
        return {"lora": req.lora, "pid": os.getpid(), "started": started, "ended": time.time()}


@app.function(keep_alive=300)
@klieg.endpoint("/fail")
def fail(req: In) -> Out:
    raise RuntimeError(f"falcompat refuses {req.text!r}")
