"""Per-request log capture in the runner: stdout, stderr and `logging` records, timestamped.

Lines are collected for the request being served and also written through to the runner's
real stderr, so ``klieg up`` shows them live.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

LogLine = dict[str, Any]


class LogSink:
    """Collects log lines until ``drain()``, or hands each to ``emit`` when one is set (the
    runner sets it while serving a request, so lines reach the worker live); thread-safe."""

    def __init__(self, passthrough: TextIO) -> None:
        self._lines: list[LogLine] = []
        self._lock = threading.Lock()
        self.passthrough = passthrough
        self.emit: Callable[[LogLine], None] | None = None

    def add(self, message: str, level: str, source: str) -> None:
        ts = datetime.fromtimestamp(time.time(), tz=UTC).isoformat()
        line = {"message": message, "level": level, "source": source, "timestamp": ts}
        emit = self.emit
        if emit is not None:
            emit(line)
            return
        with self._lock:
            self._lines.append(line)

    def drain(self) -> list[LogLine]:
        with self._lock:
            lines, self._lines = self._lines, []
        return lines


class _Stream(io.TextIOBase):
    def __init__(self, sink: LogSink, level: str, source: str) -> None:
        self._sink = sink
        self._level = level
        self._source = source
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._sink.passthrough.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._sink.add(line, self._level, self._source)
        return len(text)

    def flush(self) -> None:
        self._sink.passthrough.flush()
        if self._partial:
            self._sink.add(self._partial, self._level, self._source)
            self._partial = ""


class _Handler(logging.Handler):
    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self._sink.passthrough.write(self.format(record) + "\n")
        self._sink.add(record.getMessage(), record.levelname, record.name)


QUIET = ("httpx", "httpcore")
"""Loggers kept at WARNING unless the app sets their level: ``klieg.File.read`` fetches inputs
with httpx, whose INFO line per request would fill every request's logs."""


def install() -> LogSink:
    """Redirect stdout/stderr and the root logger into a new sink; return it."""
    sink = LogSink(sys.__stderr__ or sys.stderr)
    sys.stdout = _Stream(sink, "INFO", "stdout")
    sys.stderr = _Stream(sink, "STDERR", "stderr")
    root = logging.getLogger()
    root.addHandler(_Handler(sink))
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for name in QUIET:
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    return sink


def flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
