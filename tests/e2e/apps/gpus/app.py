"""GPU functions of different sizes that report the devices their runner was given."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

import klieg

app = klieg.App("gpus")


class Work(BaseModel):
    seconds: float = 0.1
    tag: str = ""


def _report(req: Work) -> dict[str, object]:
    started = time.time()
    time.sleep(req.seconds)
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {"tag": req.tag, "devices": devices, "started": started, "ended": time.time()}


@app.function(gpu="H100", num_gpus=1, max_concurrency=4, keep_alive=300)
@klieg.endpoint("/one")
def one(req: Work) -> dict[str, object]:
    return _report(req)


@app.function(gpu="H100", num_gpus=2, max_concurrency=2, keep_alive=300)
@klieg.endpoint("/pair")
def pair(req: Work) -> dict[str, object]:
    return _report(req)


@app.function(gpu="H100", num_gpus=4, keep_alive=300)
@klieg.endpoint("/quad")
def quad(req: Work) -> dict[str, object]:
    return _report(req)


@app.function()
@klieg.endpoint("/cpu")
def cpu(req: Work) -> dict[str, object]:
    return _report(req)
