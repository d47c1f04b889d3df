"""secretive: an app that needs a secret; it answers with the secret's digest, never the value."""

from __future__ import annotations

import hashlib
import os

from pydantic import BaseModel

import klieg

app = klieg.App("secretive", secrets=["API_TOKEN"])


class In(BaseModel):
    salt: str = ""


@app.function(keep_alive=60)
@klieg.endpoint("/")
def digest(req: In) -> dict[str, object]:
    token = os.environ["API_TOKEN"]
    print(f"using a token of {len(token)} characters")
    leaked = [k for k in os.environ if k in ("KLIEG_SIGNING_KEY", "KLIEG_SECRETS_KEY")]
    return {"sha256": hashlib.sha256((req.salt + token).encode()).hexdigest(), "leaked": leaked}


lacking = klieg.App("lacking", secrets=["NEVER_SET"])


@lacking.function()
@klieg.endpoint("/")
def needs(req: In) -> dict[str, str]:
    return {"never": os.environ["NEVER_SET"]}
