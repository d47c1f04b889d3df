"""Functions made by a factory cannot be imported by name: they travel by value (cloudpickle)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

import klieg

app = klieg.App("byvalue")


class In(BaseModel):
    n: int


def make_adder(k: int) -> Callable[[In], dict[str, int]]:
    def add(req: In) -> dict[str, int]:
        return {"sum": req.n + k}

    return add


app.function(name="add10")(klieg.endpoint("/")(make_adder(10)))
app.function(name="add5")(klieg.endpoint("/five")(make_adder(5)))
