"""Inputs with media: ``/`` takes an image and a source URL and counts its calls in a file next
to the platform's home; ``/big`` returns a ``data:`` URL of ``size`` characters."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

import klieg

app = klieg.App("intakecheck")


class In(BaseModel):
    text: str
    image: klieg.Image | None = None
    source_url: str = ""


class BigIn(BaseModel):
    size: int


@app.function(keep_alive=60)
@klieg.endpoint("/")
def take(req: In) -> dict[str, str]:
    counter = Path(os.environ["KLIEG_HOME"]) / "intakecheck-calls"
    with counter.open("a") as calls:
        calls.write(req.text + "\n")
    return {"text": req.text}


@app.function(keep_alive=60)
@klieg.endpoint("/big")
def big(req: BigIn) -> dict[str, str]:
    return {"url": "data:text/plain," + "a" * req.size}
