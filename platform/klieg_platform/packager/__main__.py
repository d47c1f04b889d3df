"""``python -m klieg_platform.packager ENV.json``: build one locked env (``{"python", "lock",
"key"}``) into ``$KLIEG_HOME/envs/<key>`` and publish it, as a worker would on first use. The
env images run it (``infra/images/env.Dockerfile``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from klieg_platform.config import Settings
from klieg_platform.packager import Packager
from klieg_platform.packager.spec import LockedEnv


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m klieg_platform.packager ENV.json", file=sys.stderr)
        return 2
    doc = json.loads(Path(argv[0]).read_text())
    env = LockedEnv(python=doc["python"], lock=doc["lock"], key=doc["key"])
    path = Packager(Settings.from_env()).build(env)
    print(f"env {env.key} at {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
