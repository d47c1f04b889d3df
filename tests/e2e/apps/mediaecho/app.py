"""Reads an input image (URL, data: URI or upload) and returns a grey copy as a new image."""

from __future__ import annotations

from pydantic import BaseModel

import klieg

app = klieg.App("mediaecho", requirements=["pillow>=10"])


class In(BaseModel):
    image: klieg.Image


class Out(BaseModel):
    width: int
    height: int
    grey: klieg.Image
    note: klieg.File


@app.function(keep_alive=120)
@klieg.endpoint("/")
def grey(req: In) -> Out:
    source = req.image.to_pil()
    grey = source.convert("L")
    note = klieg.File.from_bytes(f"{source.width}x{source.height}".encode(), "text/plain")
    return Out(width=source.width, height=source.height, grey=klieg.Image.from_pil(grey), note=note)
