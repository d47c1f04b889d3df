"""budget-three: ``ballast.Ballast`` with a zygote of its own (``preload_code=True``)."""

from __future__ import annotations

from ballast import Ballast

import klieg

app = klieg.App("budget-three", preload_code=True)
app.cls(keep_alive=600)(Ballast)
