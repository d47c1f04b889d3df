"""min_concurrency=1: one runner is kept warm before and between requests (keep_alive=1)."""

from __future__ import annotations

import os
from pathlib import Path

import klieg

app = klieg.App("prewarm")


@app.cls(min_concurrency=1, max_concurrency=2, keep_alive=1)
class Warm:
    def setup(self) -> None:
        with (Path(os.environ["KLIEG_HOME"]) / "prewarm-pids").open("a") as f:
            f.write(f"{os.getpid()}\n")

    @klieg.endpoint("/")
    def pid(self) -> dict[str, int]:
        return {"pid": os.getpid()}
