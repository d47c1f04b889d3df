"""``preload_code=True``, but its module starts a thread at import: its revision's zygote refuses
(a fork copies one thread), and its runners fork from its env's zygote instead."""

from __future__ import annotations

import os
import threading
import time

import klieg

app = klieg.App("threadedcode", preload=[], preload_code=True)
LOADED_BY = os.getpid()
threading.Thread(target=time.sleep, args=(3600,), name="poller", daemon=True).start()


@app.function()
@klieg.endpoint("/")
def where() -> dict[str, int]:
    return {"pid": os.getpid(), "ppid": os.getppid(), "loaded_by": LOADED_BY}
