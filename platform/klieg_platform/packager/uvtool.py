"""Running the ``uv`` binary of the ``uv`` wheel with the machine's pip settings.

Every command runs with ``--no-config`` (uv reads no ``uv.toml`` / ``pyproject.toml``: settings
come only from ``PipSettings``) and ``UV_PYTHON_DOWNLOADS=never``. Index commands add the pip
settings plus ``--index-strategy unsafe-best-match``: pip considers every version on every index,
while uv by default stops at the first index that knows a name (so a local mirror holding only
``six 1.17.0`` would hide ``six==1.16.0`` on PyPI). A failed command raises ``UvFailed``.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from uv import find_uv_bin

from klieg_platform.config import PipSettings

COMPILE_TIMEOUT_S = 600.0
VENV_TIMEOUT_S = 120.0
INSTALL_TIMEOUT_S = 3600.0
BUILD_TIMEOUT_S = 600.0

_ERROR_START = re.compile("^\\s*(error:|\u00d7)")
_MAX_DETAIL_LINES = 60


class UvFailed(Exception):
    """A uv command exited non-zero or timed out. ``output`` is its stderr."""

    def __init__(self, command: Sequence[str], output: str) -> None:
        self.command = list(command)
        self.output = output
        super().__init__(f"{' '.join(self.command[:3])} failed: {self.message()}")

    def message(self) -> str:
        """uv's diagnostic: from its first ``error:`` line on, else the tail of its output."""
        lines = [line.rstrip() for line in self.output.splitlines() if line.strip()]
        start = next((i for i, line in enumerate(lines) if _ERROR_START.match(line)), None)
        kept = lines[start:] if start is not None else lines[-_MAX_DETAIL_LINES:]
        return "\n".join(kept[:_MAX_DETAIL_LINES]) or "no output"


class Uv:
    """The uv commands the packager needs, each a thin wrapper over one subprocess."""

    def __init__(self, pip: PipSettings) -> None:
        self.binary = find_uv_bin()
        self.pip = pip
        self.environ = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "NO_COLOR": "1"}

    def index_args(self) -> list[str]:
        """Index flags equivalent to pip's view of packages (see the module docstring)."""
        return [*self.pip.uv_args(), "--index-strategy", "unsafe-best-match"]

    def compile(self, requirements: Sequence[str], python: str) -> str:
        """``uv pip compile`` of the requirements for a Python version; returns the pin list."""
        args = ["pip", "compile", "-", "--python-version", python, "--no-header", "--no-annotate"]
        stdin = "".join(f"{req.strip()}\n" for req in requirements)
        return self.run([*args, *self.index_args()], stdin=stdin, timeout=COMPILE_TIMEOUT_S)

    def venv(self, path: Path, python: str) -> None:
        """Create an empty virtual environment at ``path`` with the requested Python."""
        self.run(["venv", str(path), "--python", python, "--no-project"], timeout=VENV_TIMEOUT_S)

    def sync(self, interpreter: Path, lockfile: Path, on_line: Callable[[str], None]) -> None:
        """Make the env of ``interpreter`` hold exactly the pins of ``lockfile``."""
        args = ["pip", "sync", str(lockfile), "--python", str(interpreter), *self.index_args()]
        self.run(args, timeout=INSTALL_TIMEOUT_S, on_line=on_line)

    def install_wheel(self, interpreter: Path, wheel: Path) -> None:
        """Install one wheel without its dependencies (they come from the lock)."""
        args = ["pip", "install", "--no-deps", "--python", str(interpreter), str(wheel)]
        self.run(args, timeout=INSTALL_TIMEOUT_S)

    def build_wheel(self, source: Path, out_dir: Path, interpreter: Path) -> None:
        """Build a wheel of the project at ``source`` into ``out_dir``."""
        args = ["build", "--wheel", "--out-dir", str(out_dir), "--python", str(interpreter)]
        self.run([*args, *self.index_args(), str(source)], timeout=BUILD_TIMEOUT_S)

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float,
        stdin: str | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> str:
        """Run ``uv --no-config <args>``; return stdout. Streams stderr lines to ``on_line``."""
        command = [self.binary, "--no-config", *args]
        if on_line is not None:
            return self._stream(command, timeout, on_line)
        try:
            proc = subprocess.run(
                command,
                input=stdin,
                capture_output=True,
                text=True,
                env=self.environ,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise UvFailed(command, f"error: timed out after {timeout:.0f}s") from exc
        if proc.returncode != 0:
            raise UvFailed(command, proc.stderr or proc.stdout)
        return proc.stdout

    def _stream(self, command: list[str], timeout: float, on_line: Callable[[str], None]) -> str:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.environ,
        )
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if line.strip():
                    on_line(line.rstrip())
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0:
            suffix = f"error: timed out after {timeout:.0f}s\n" if expired.is_set() else ""
            raise UvFailed(command, "".join(lines) + suffix)
        return "".join(lines)
