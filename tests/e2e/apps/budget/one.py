"""budget-one: ``ballast.Ballast`` with a zygote of its own (``preload=["json"]``)."""

from __future__ import annotations

from ballast import Ballast

import klieg

app = klieg.App("budget-one", preload=["json"])
app.cls(keep_alive=600)(Ballast)
