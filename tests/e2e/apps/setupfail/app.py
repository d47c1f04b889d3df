"""A class whose setup() raises; counts its attempts in a file next to the code."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

import klieg

app = klieg.App("setupfail")


class In(BaseModel):
    x: int = 0


@app.cls(keep_alive=5)
class Broken:
    def setup(self) -> None:
        counter = Path(os.environ["KLIEG_HOME"]) / "setupfail-attempts"
        counter.write_text(str(int(counter.read_text() or 0) + 1 if counter.exists() else 1))
        print("loading weights that are not there")
        raise RuntimeError("weights missing: /models/broken.safetensors")

    @klieg.endpoint("/")
    def run(self, req: In) -> dict[str, int]:
        return {"x": req.x}
