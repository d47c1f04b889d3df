"""An app the tests delete while its requests run and wait: one runner at a time, an env of its
own (``markdown``), so deleting it collects that env."""

from __future__ import annotations

import time

from pydantic import BaseModel

import klieg

app = klieg.App("doomed", requirements=["markdown==3.7"])


class Work(BaseModel):
    seconds: float = 0.0
    text: str = "done"


@app.function(max_concurrency=1, keep_alive=60)
@klieg.endpoint("/")
def work(req: Work) -> dict[str, str]:
    import markdown

    time.sleep(req.seconds)
    return {"html": markdown.markdown(req.text)}
