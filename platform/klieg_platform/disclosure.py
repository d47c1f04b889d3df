"""What a caller sees of a request to an app it does not own.

The owner of an app sees every request's record as the worker wrote it: each log line (the
tracebacks its runner printed included) and each error as raised. Any other caller (a tenant
calling a shared or public app, a workflow's caller, an app calling another by ``klieg.call``)
sees, unless the owner lets callers see the app's logs (the app's ``caller_logs``):

- logs: only the lines the platform wrote itself (a workflow's node events), never a line the
  app printed or logged;
- errors: the error type and its message. A traceback inside a message is cut down to its last
  line (the exception), and file paths (absolute, or under a home directory: ``~/x``; their
  directories may hold spaces) become ``.../<file name>``.

The record is never changed: this is a view, taken where a record leaves the platform for its
caller (the gateway's status, result, stream and sync replies).

Example::

    error_view({"detail": "OSError: no /srv/klieg/code/ab12/w.bin", "error_type": "AppError"})
    # {"detail": "OSError: no .../w.bin", "error_type": "AppError"}
"""

from __future__ import annotations

import re
from typing import Any

WORKFLOW_SOURCE = "workflow"
"""``source`` of the workflow executor's node events in a workflow request's logs."""
PLATFORM_SOURCES = frozenset({WORKFLOW_SOURCE})
"""``source`` of every log line the platform writes itself."""

_TRACEBACK = "Traceback (most recent call last):"
_FRAME = re.compile(r'^\s*File "[^"]*", line \d+.*$', re.MULTILINE)
_SEG = r"[\w.@+~-]+"
_DIR = rf"/{_SEG}(?: +{_SEG})*(?=/)"
"""A directory of a path: words with spaces between them (``My Models``), a ``/`` after."""
_PATH = re.compile(rf"(?<![\w/.~@+-])(?:~(?:[^\W\d][\w.-]*)?(?:{_DIR})*|(?:{_DIR})+)/{_SEG}/?")
"""An absolute path of two parts or more (after ``:`` too, as in ``ENOENT:/srv/a``, but not a
URL's ``//host/...``), or a home-relative one (``~/x``, ``~user/x/y``)."""


def text_view(text: str) -> str:
    """``text`` without tracebacks, frame lines or absolute file paths (see the module)."""
    while _TRACEBACK in text:
        before, _, after = text.partition(_TRACEBACK)
        lines = [line for line in after.splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if not line.startswith((" ", "\t"))), "")
        text = (before + last).strip()
    text = _FRAME.sub("", text)
    return _PATH.sub(lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def _view(value: Any) -> Any:
    if isinstance(value, str):
        return text_view(value)
    if isinstance(value, list):
        return [_view(item) for item in value]
    if isinstance(value, dict):
        return {key: _view(item) for key, item in value.items()}
    return value


def error_view(error: dict[str, Any]) -> dict[str, Any]:
    """A request's error (``{"detail", "error_type"}``) as a caller that is not the app's owner
    sees it: the type as is, every text in the detail through ``text_view``."""
    return {**error, "detail": _view(error.get("detail"))}


def event_view(event: dict[str, Any]) -> dict[str, Any]:
    """A workflow's node event (a log line, or an item of a streamed workflow) with the error
    it carries (``failed`` events) seen through ``error_view``."""
    error = event.get("error")
    return {**event, "error": error_view(error)} if isinstance(error, dict) else event


def logs_view(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The log lines a caller that is not the app's owner sees: the platform's own lines, with
    their errors seen through ``event_view``."""
    return [event_view(line) for line in lines if line.get("source") in PLATFORM_SOURCES]
