"""Same requirements as apps/echo (none): its deploy must reuse echo's env."""

from __future__ import annotations

from pydantic import BaseModel

import klieg

app = klieg.App("echo2")


class In(BaseModel):
    text: str


@app.function()
@klieg.endpoint("/")
def reverse(req: In) -> dict[str, str]:
    return {"text": req.text[::-1]}
