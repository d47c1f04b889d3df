"""Server-sent events: one ``data:`` line per JSON document (an ``event:`` name for errors)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse


def event(data: bytes, name: str | None = None) -> bytes:
    """One SSE event; ``data`` is a single-line JSON document."""
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + data.replace(b"\n", b" ") + b"\n\n"


def response(
    events: AsyncIterator[bytes], headers: dict[str, str] | None = None
) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
