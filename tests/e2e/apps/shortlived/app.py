"""keep_alive=1: its runner is stopped a second after it goes idle."""

from __future__ import annotations

import os

import klieg

app = klieg.App("shortlived")


@app.function(keep_alive=1)
@klieg.endpoint("/")
def pid() -> dict[str, int]:
    return {"pid": os.getpid()}
