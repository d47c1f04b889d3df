"""budget-two: ``ballast.Ballast`` with a zygote of its own (``preload=["decimal"]``)."""

from __future__ import annotations

from ballast import Ballast

import klieg

app = klieg.App("budget-two", preload=["decimal"])
app.cls(keep_alive=600)(Ballast)
