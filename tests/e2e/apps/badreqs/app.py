"""An app whose requirements cannot be resolved."""

from __future__ import annotations

import klieg

app = klieg.App("badreqs", requirements=["klieg-no-such-package-xyz==9.9.9"])


@app.function()
def f() -> dict[str, bool]:
    return {"ok": True}
