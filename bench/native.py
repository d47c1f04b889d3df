"""Run a bench over Klieg modules compiled by mypyc: the same source, as C extension modules.

    import native
    native.use_from_env()                 # at the top of the bench, before importing the modules
    ...
    if __name__ == "__main__":
        sys.exit(native.run_compiled(main, MODULES))

``run_compiled`` compiles ``MODULES`` (e.g. ``klieg_platform.scheduler``) with mypyc, unless
``--interpreted`` is among the arguments, and runs the bench again in a fresh interpreter whose
package finds the compiled modules first (``use_from_env``); the bench's own code and every
other module stay as they are. A compiled tree is keyed by the sources, the Python and the mypy
versions, built once under a file lock into ``$XDG_CACHE_HOME/klieg/mypyc/<key>`` (default
``~/.cache``) and published by renaming the finished folder, so a half-built tree is never used.
mypy is one of the project's dev dependencies; building needs a C compiler and the Python
headers. Where the build fails, the bench runs interpreted and says so on stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

ENV = "KLIEG_BENCH_COMPILED"
"""Set in the re-run bench: the compiled tree its modules come from."""
INTERPRETED = "--interpreted"


def log(message: str) -> None:
    print(f"[native] {message}", file=sys.stderr, flush=True)


def _sources(modules: Sequence[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            raise RuntimeError(f"{name} has no Python source to compile")
        found[name] = Path(spec.origin)
    return found


def _key(sources: dict[str, Path]) -> str:
    import mypy.version

    digest = hashlib.sha256()
    digest.update(f"{sys.version}|{sysconfig.get_platform()}|{mypy.version.__version__}".encode())
    for name, path in sorted(sources.items()):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def compiled(modules: Sequence[str]) -> Path:
    """The folder of ``modules`` compiled by mypyc (built now if it does not exist yet).

    Raises RuntimeError when mypyc cannot build them (the reason in the message)."""
    sources = _sources(modules)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "klieg" / "mypyc"
    target = cache / _key(sources)
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        log(f"compiling {', '.join(modules)} with mypyc (once per source version)")
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            build = Path(tmp)
            files = []
            for name, path in sources.items():
                rel = Path(*name.split(".")).with_suffix(".py")
                (build / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, build / rel)
                files.append(str(rel))
                for parent in rel.parents[:-1]:  # the packages, as plain files
                    (build / parent / "__init__.py").touch()
            done = subprocess.run(
                [sys.executable, "-m", "mypyc", *files],
                cwd=build,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
                raise RuntimeError("mypyc failed: " + " | ".join(tail))
            out = build / "out"
            made = [p for p in build.rglob("*.so") if p.relative_to(build).parts[0] != "build"]
            for built in made:
                dest = out / built.relative_to(build)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(built, dest)
            out.rename(target)
    return target


def use(tree: Path) -> None:
    """Make the modules compiled into ``tree`` the ones imported (before they are imported)."""
    sys.path.insert(0, str(tree))  # mypyc's shared library of the tree, a top-level module
    for package in sorted(p for p in tree.rglob("*") if p.is_dir()):
        name = ".".join(package.relative_to(tree).parts)
        module = importlib.import_module(name)
        module.__path__.insert(0, str(package))


def use_from_env() -> bool:
    """In a bench re-run by ``run_compiled``: use its compiled tree. Whether it does."""
    tree = os.environ.get(ENV)
    if tree:
        use(Path(tree))
    return bool(tree)


def run_compiled(main: Callable[[list[str]], int], modules: Sequence[str]) -> int:
    """The bench's entry point: ``main(argv)`` over ``modules`` compiled (module docstring)."""
    argv = sys.argv[1:]
    if INTERPRETED in argv or os.environ.get(ENV):
        return main([a for a in argv if a != INTERPRETED])
    try:
        tree = compiled(modules)
    except (RuntimeError, OSError, ImportError) as exc:
        log(f"running interpreted: {exc}")
        return main(argv)
    env = {**os.environ, ENV: str(tree)}
    with contextlib.suppress(AttributeError):
        sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, sys.argv[0], *argv], env)
    return 0  # not reached
