"""A runner that loads LoRAs on demand and reports those it holds (``provide_hints``), for the
runner-hint tests: each answer says which runner served it and when."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

import klieg

app = klieg.App("hinted")


class Gen(BaseModel):
    lora: str = ""
    seconds: float = 0.0


@app.cls(max_concurrency=2, keep_alive=300)
class Loras:
    def setup(self) -> None:
        self.loaded: list[str] = []

    def provide_hints(self) -> list[str]:
        return list(self.loaded)

    @klieg.endpoint("/")
    def generate(self, req: Gen) -> dict[str, object]:
        started = time.time()
        if req.lora and req.lora not in self.loaded:
            self.loaded.append(req.lora)
        time.sleep(req.seconds)
        return {"pid": os.getpid(), "lora": req.lora, "started": started, "ended": time.time()}
