"""An endpoint that always raises: its requests complete with an AppError."""

from __future__ import annotations

from pydantic import BaseModel

import klieg

app = klieg.App("raises")


class In(BaseModel):
    text: str = ""


@app.function(keep_alive=60)
@klieg.endpoint("/")
def fail(req: In) -> dict[str, str]:
    raise ValueError(f"cannot handle {req.text!r}")
