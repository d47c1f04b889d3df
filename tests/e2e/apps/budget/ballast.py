"""The function of the three apps the memory budget test cycles through
(``tests/e2e/test_memory_budget.py``): each runner holds 16 MiB of its own and says which
process imported this module (its own, or the zygote it was forked from)."""

from __future__ import annotations

import os

import klieg

LOADED_BY = os.getpid()


class Ballast:
    def setup(self) -> None:
        self.ballast = b"\x01" * (16 << 20)

    @klieg.endpoint("/")
    def where(self) -> dict[str, int]:
        return {"pid": os.getpid(), "ppid": os.getppid(), "loaded_by": LOADED_BY}
