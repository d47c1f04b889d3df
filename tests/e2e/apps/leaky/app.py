"""Endpoints that fail the way real code does: with a traceback in their logs and a host path
(where the app's code lives) in their messages (``/paths``: in the forms other tools write
them). ``/ok`` prints a line and succeeds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

import klieg

app = klieg.App("leaky")

WEIGHTS = Path(__file__).resolve().parent / "weights.bin"


class In(BaseModel):
    text: str = ""


@app.function(keep_alive=60)
@klieg.endpoint("/")
def load(req: In) -> dict[str, str]:
    print(f"reading weights from {WEIGHTS}")
    raise RuntimeError(f"cannot open {WEIGHTS}")


@app.function(keep_alive=60)
@klieg.endpoint("/ok")
def ok(req: In) -> dict[str, str]:
    print(f"hello from {WEIGHTS.parent}")
    return {"text": req.text}


@app.function(keep_alive=60)
@klieg.endpoint("/paths")
def paths(req: In) -> dict[str, str]:
    """Paths as other code writes them: after a colon, under a home, with spaces."""
    here = WEIGHTS.parent
    raise FileNotFoundError(f"ENOENT:{here}/cache/a.bin, ~/models/b.bin, {here}/My Models/c.bin")


@app.function(keep_alive=60)
@klieg.endpoint("/items")
def items(req: In) -> Iterator[dict[str, int]]:
    yield {"index": 0}
    raise RuntimeError(f"cannot open {WEIGHTS}")
