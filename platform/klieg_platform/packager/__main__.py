"""``python -m klieg_platform.packager ENV.json``: build one locked env (``{"python", "lock",
"key"}``) into ``$KLIEG_HOME/envs/<key>`` and publish it, as a worker would on first use. The
env images run it (``infra/images/env.Dockerfile``).

``python -m klieg_platform.packager seed DIR``: copy every complete env of ``$KLIEG_HOME/envs``
that the env store ``DIR`` lacks into it (``seeds.py``); an env image's init container (or
compose service) runs it into the worker's env store volume.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from klieg_platform.config import Settings
from klieg_platform.packager import Packager
from klieg_platform.packager.seeds import seed
from klieg_platform.packager.spec import LockedEnv

USAGE = "usage: python -m klieg_platform.packager ENV.json | seed DIR"


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "seed":
        source = Settings.from_env().env_dir
        for key in seed(source, Path(argv[1])):
            print(f"env {key} in {argv[1]}")
        return 0
    if len(argv) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    doc = json.loads(Path(argv[0]).read_text())
    env = LockedEnv(python=doc["python"], lock=doc["lock"], key=doc["key"])
    path = Packager(Settings.from_env()).build(env)
    print(f"env {env.key} at {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
