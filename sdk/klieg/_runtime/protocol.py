"""The runner IPC contract: framed messages over a local stream socket.

Frame: two big-endian u32 lengths (header, body), then the JSON header, then the raw body.
The body carries request/response payloads as the client sent them (JSON bytes), so nothing on
the path re-encodes them.

Messages (``type`` in the header):
  runner -> worker  ``ready`` {pid}                      after setup() succeeded
  runner -> worker  ``setup_failed`` {error, logs}        then the runner exits
  worker -> runner  ``call`` {id, endpoint, token} + body run one request
  worker -> runner  ``batch`` {ids, endpoint, sizes, tokens} + the bodies, concatenated
                    run requests of a batched endpoint in one call; one ``result`` per id
                    follows, in order; its ``log`` frames carry ``ids`` (the whole batch)
                    ``token`` / ``tokens`` (one per id): the call token of each request's
                    tenant (``kc1.<tenant>.<expiry>.<sig>``), which ``klieg.call`` sends to the
                    gateway at ``$KLIEG_GATEWAY_URL``; empty or absent when the worker has none
  runner -> worker  ``log`` {id, line}                    a log line of the running request
  runner -> worker  ``chunk`` {id} + body                 one item of a generator endpoint
  runner -> worker  ``media`` {id, token, content_type, file_name} + body
                    the bytes behind a ``klieg-media://<token>`` URL in the next chunk/result
  runner -> worker  ``result`` {id, ok, error?, logs} + body (the output JSON when ok; for a
                    generator endpoint its last item)
  worker -> runner  ``shutdown`` {}                       run teardown() and exit
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

_HEAD = struct.Struct(">II")
MAX_FRAME = 1 << 30

Header = dict[str, Any]


def encode(header: Header, body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(len(head), len(body)) + head + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket) -> tuple[Header, bytes]:
    """Blocking read of one frame (runner side)."""
    hlen, blen = _HEAD.unpack(_recv_exact(sock, _HEAD.size))
    if hlen + blen > MAX_FRAME:
        raise EOFError("frame too large")
    header = json.loads(_recv_exact(sock, hlen))
    body = _recv_exact(sock, blen) if blen else b""
    return header, body


async def read(reader: asyncio.StreamReader) -> tuple[Header, bytes]:
    """Async read of one frame (worker side). Raises EOFError when the runner is gone."""
    try:
        hlen, blen = _HEAD.unpack(await reader.readexactly(_HEAD.size))
        header = json.loads(await reader.readexactly(hlen))
        body = await reader.readexactly(blen) if blen else b""
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise EOFError("runner closed the connection") from exc
    return header, body
