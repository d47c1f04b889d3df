"""markdown: render Markdown to HTML with the `markdown` package, in its own uv environment.

    POST /{owner}/markdown   {"text": "# Hi"} -> {"html": "<h1>Hi</h1>", "runner_pid": 1234}

The renderer is built once per runner in ``setup()``; ``runner_pid`` shows warm reuse.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

import klieg

app = klieg.App("markdown", requirements=["markdown==3.7"], python="3.11")


class RenderIn(BaseModel):
    text: str
    extensions: list[str] = []


class RenderOut(BaseModel):
    html: str
    runner_pid: int
    setup_calls: int


@app.cls(keep_alive=120, max_concurrency=2)
class Renderer:
    def setup(self) -> None:
        import markdown  # heavy imports belong in setup(): they run in the app's env

        self.markdown: Any = markdown
        self.setup_calls = getattr(self, "setup_calls", 0) + 1

    @klieg.endpoint("/")
    def render(self, req: RenderIn) -> RenderOut:
        html = self.markdown.markdown(req.text, extensions=req.extensions)
        return RenderOut(html=html, runner_pid=os.getpid(), setup_calls=self.setup_calls)
