"""The runner IPC contract: typed messages in frames over a local stream socket.

Frame: two big-endian u32 lengths (header, body), then the header, then the raw body. The header
is one message below, msgpack-encoded with its tag in ``type``; the body carries request and
response payloads as the client sent them (JSON bytes), so nothing on the path re-encodes them.

Messages (their fields are the class attributes):
  runner -> worker  :class:`Ready`        after setup() succeeded (with the runner's hints)
  runner -> worker  :class:`SetupFailed`  setup() raised; then the runner exits
  worker -> runner  :class:`Call` + body  run one request
  worker -> runner  :class:`Batch` + the bodies, concatenated (``sizes``)
                    run requests of a batched endpoint in one call; one :class:`Result` per id
                    follows, in order; the batch's :class:`Log` frames carry ``ids``
  runner -> worker  :class:`Log`          a log line of the running request
  runner -> worker  :class:`Chunk` + body one item of a generator endpoint
  runner -> worker  :class:`Media` + body the bytes behind a ``klieg-media://<token>`` URL in
                                          the next chunk or result
  runner -> worker  :class:`Result` + body (the output JSON when ``ok``; for a generator
                    endpoint its last item; the runner's hints after the call)
  worker -> runner  :class:`Shutdown`     run teardown() and exit

Errors cross the boundary only as :class:`WireError`, a serialised ``KliegError``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import traceback
from typing import Any

import msgspec

from klieg.exceptions import AppError, KliegError, error_class

_HEAD = struct.Struct(">II")
MAX_FRAME = 1 << 30

LogLine = dict[str, Any]
"""One captured line: ``message``, ``level``, ``source``, ``timestamp`` (see logs.py)."""


class ProtocolError(Exception):
    """A frame that breaks the contract: a header that is no message, or a frame over
    ``MAX_FRAME`` on the worker side."""


class WireError(msgspec.Struct, frozen=True, omit_defaults=True):
    """A ``KliegError`` as it crosses the process boundary; ``error_type`` names its class."""

    detail: Any
    error_type: str
    traceback: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> WireError:
        """``exc`` with its traceback; an exception that is no ``KliegError`` becomes an
        ``AppError`` whose detail is ``"<type>: <message>"``."""
        trace = "".join(traceback.format_exception(exc))
        if isinstance(exc, KliegError):
            return cls(exc.detail, exc.error_type, trace)
        return cls(f"{type(exc).__name__}: {exc}", AppError.__name__, trace)

    def to_exception(self) -> KliegError:
        """The error as an instance of the class ``error_type`` names, with that class's
        status; a name the SDK does not define gives a ``KliegError`` keeping the name."""
        return error_class(self.error_type)(self.detail, error_type=self.error_type)


class _Message(msgspec.Struct, omit_defaults=True, tag_field="type"):
    pass


class Ready(_Message, tag="ready"):
    """``hints``: what the app's ``provide_hints()`` returned after setup (None: it has none)."""

    pid: int
    setup_s: float = 0.0
    """How long the app's own ``setup()`` took."""
    hints: list[str] | None = None


class SetupFailed(_Message, tag="setup_failed"):
    error: WireError
    logs: list[LogLine] = []


class Call(_Message, tag="call"):
    """``token``: the call token of the request's tenant (``kc1.<tenant>.<expiry>.<sig>``),
    which ``klieg.call`` sends to the gateway at ``$KLIEG_GATEWAY_URL``; empty when the worker
    has none."""

    id: str
    endpoint: str = "/"
    token: str = ""


class Batch(_Message, tag="batch"):
    """``sizes``: the length of each request's body in the frame body; ``tokens``: each
    request's call token (see :class:`Call`)."""

    ids: list[str]
    sizes: list[int]
    endpoint: str = "/"
    tokens: list[str] = []

    def split(self, body: bytes) -> list[bytes]:
        """The frame body cut into one body per request."""
        bodies, at = [], 0
        for size in self.sizes:
            bodies.append(body[at : at + size])
            at += size
        return bodies


class Log(_Message, tag="log"):
    """``ids``: every request of the batch the line was logged in (``id`` is the first);
    empty outside a batch."""

    id: str
    line: LogLine
    ids: list[str] = []


class Chunk(_Message, tag="chunk"):
    id: str


class Media(_Message, tag="media"):
    id: str
    token: str
    content_type: str
    file_name: str


class Result(_Message, tag="result"):
    """``error`` is set exactly when ``ok`` is false; ``logs``: lines not sent as ``Log``;
    ``hints``: what the app's ``provide_hints()`` returned after the call (the last result of a
    batch carries them), which replace the runner's; None: unchanged."""

    id: str
    ok: bool
    error: WireError | None = None
    logs: list[LogLine] = []
    hints: list[str] | None = None


class Shutdown(_Message, tag="shutdown"):
    pass


Message = Ready | SetupFailed | Call | Batch | Log | Chunk | Media | Result | Shutdown
Event = Log | Chunk | Media
"""What the runner sends about a request while it runs, ahead of its ``Result``."""

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Message)


def encode(msg: Message, body: bytes = b"") -> bytes:
    """One frame: ``msg`` as the header, ``body`` as is."""
    head = _ENCODER.encode(msg)
    return _HEAD.pack(len(head), len(body)) + head + body


def decode(head: bytes) -> Message:
    """The message in a frame header; raises ProtocolError when it is none."""
    try:
        return _DECODER.decode(head)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed frame header: {exc}") from exc


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket) -> tuple[Message, bytes]:
    """Blocking read of one frame (runner side). Raises EOFError when the peer is gone or the
    frame is over MAX_FRAME (the stream cannot go on), ProtocolError when its header is no
    message (the frame was read whole: the next one can be read)."""
    hlen, blen = _HEAD.unpack(_recv_exact(sock, _HEAD.size))
    if hlen + blen > MAX_FRAME:
        raise EOFError("frame too large")
    head = _recv_exact(sock, hlen)
    body = _recv_exact(sock, blen) if blen else b""
    return decode(head), body


class Frames:
    """Blocking reads of whole frames from a socket (runner side), through a buffer: a frame
    that arrived whole costs one system call, not one per part. Raises as ``recv``."""

    CHUNK = 1 << 16

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def recv(self) -> tuple[Message, bytes]:
        self._fill(_HEAD.size)
        hlen, blen = _HEAD.unpack_from(self._buf)
        if hlen + blen > MAX_FRAME:
            raise EOFError("frame too large")
        end = _HEAD.size + hlen + blen
        self._fill(end)
        head = bytes(self._buf[_HEAD.size : _HEAD.size + hlen])
        body = bytes(self._buf[_HEAD.size + hlen : end]) if blen else b""
        del self._buf[:end]
        return decode(head), body

    def _fill(self, size: int) -> None:
        while len(self._buf) < size:
            chunk = self.sock.recv(max(size - len(self._buf), self.CHUNK))
            if not chunk:
                raise EOFError("peer closed the connection")
            self._buf += chunk


SPLIT_READ = 1 << 16
"""A frame up to this size is read in one piece and cut (one await instead of two)."""


async def read(reader: asyncio.StreamReader) -> tuple[Message, bytes]:
    """Async read of one frame (worker side). Raises EOFError when the runner is gone,
    ProtocolError when the frame is over MAX_FRAME or its header is no message."""
    try:
        hlen, blen = _HEAD.unpack(await reader.readexactly(_HEAD.size))
        if hlen + blen > MAX_FRAME:
            raise ProtocolError(f"frame of {hlen + blen} bytes is over MAX_FRAME")
        if hlen + blen <= SPLIT_READ:
            rest = await reader.readexactly(hlen + blen)
            head, body = rest[:hlen], rest[hlen:]
        else:
            head = await reader.readexactly(hlen)
            body = await reader.readexactly(blen) if blen else b""
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise EOFError("runner closed the connection") from exc
    return decode(head), body
