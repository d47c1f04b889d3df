"""echo: the smallest Klieg app. Two CPU functions, no requirements beyond the SDK.

POST /{owner}/echo         {"text": "hi"}  -> {"text": "hi", "length": 2}
POST /{owner}/echo/upper   {"text": "hi"}  -> {"text": "HI", "length": 2}
"""

from __future__ import annotations

from pydantic import BaseModel, Field

import klieg

app = klieg.App("echo")


class EchoIn(BaseModel):
    text: str = Field(description="text to send back", max_length=100_000)


class EchoOut(BaseModel):
    text: str
    length: int


@app.function(keep_alive=300, max_concurrency=2)
@klieg.endpoint("/")
def echo(req: EchoIn) -> EchoOut:
    return EchoOut(text=req.text, length=len(req.text))


@app.function(keep_alive=300)
def upper(req: EchoIn) -> EchoOut:
    print(f"upper-casing {len(req.text)} characters")
    return EchoOut(text=req.text.upper(), length=len(req.text))
