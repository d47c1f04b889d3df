"""Runner IPC headers: the JSON frames the protocol used to send versus its msgspec msgpack ones.

    .venv/bin/python bench/ipc.py [--loops N] [--repeats R] [--round-trips M]

``codec``: encode one frame (header + a small JSON body) and decode its header back, for a
typical ``call`` header, a ``result`` header without logs and one carrying two log lines;
``--loops`` (default 200000) per timing, best of ``--repeats`` (default 5), in µs per message.
The JSON side is what ``protocol.py`` did before (``json.dumps`` with compact separators, a dict
header read with ``json.loads``); the msgpack side is ``protocol.encode`` / ``protocol.decode``
into the typed messages.

``round_trip``: a worker-side asyncio reader (``protocol.read``, as ``RunnerProcess`` uses it)
sends ``call`` frames over a real socketpair to an echo thread (the runner's buffered blocking
``Frames.recv``, no endpoint code) that answers each with a ``result`` frame; µs per call and
answer, best of ``--repeats`` runs of ``--round-trips`` (default 20000). Both ends share one
process and so the GIL, but each waits in a system call while the other works.

Prints exactly one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from klieg._runtime import protocol

_HEAD = struct.Struct(">II")
RID = "4f1c2d9be0a84c7f9a3b6e5d2c1f0a98"
TOKEN = "kc1.tenant-7f3a.1767225600.Yk3xQ2v9LmN8pR4sT6uW1zA5bC7dE0fG2hJ4kL6mN8o"
BODY = b'{"text":"hello"}'
LINE = {
    "message": "generated 1 image in 0.41s",
    "level": "INFO",
    "source": "stdout",
    "timestamp": "2025-01-01T12:00:00.123456+00:00",
}

CASES: dict[str, tuple[dict[str, Any], protocol.Message]] = {
    "call": (
        {"type": "call", "id": RID, "endpoint": "/", "token": TOKEN},
        protocol.Call(RID, "/", TOKEN),
    ),
    "result": (
        {"type": "result", "id": RID, "ok": True, "logs": []},
        protocol.Result(RID, True),
    ),
    "result_2_logs": (
        {"type": "result", "id": RID, "ok": True, "logs": [LINE, LINE]},
        protocol.Result(RID, True, None, [LINE, LINE]),
    ),
}


def json_encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(len(head), len(body)) + head + body


def json_cycle(header: dict[str, Any]) -> None:
    """One frame of the JSON scheme built, and its header read back."""
    frame = json_encode(header, BODY)
    json.loads(frame[8 : len(frame) - len(BODY)])


def msgpack_cycle(msg: protocol.Message) -> None:
    """One frame of the msgpack scheme built, and its header read back."""
    frame = protocol.encode(msg, BODY)
    protocol.decode(frame[8 : len(frame) - len(BODY)])


def best_us(fn: Callable[[Any], None], arg: object, loops: int, repeats: int) -> float:
    """Best of ``repeats`` timings of ``loops`` calls ``fn(arg)``, in µs per call."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(loops):
            fn(arg)
        best = min(best, time.perf_counter() - started)
    return round(best / loops * 1e6, 3)


def codec(loops: int, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (header, msg) in CASES.items():
        old_frame, new_frame = json_encode(header, BODY), protocol.encode(msg, BODY)
        old_head, new_head = old_frame[8 : -len(BODY)], new_frame[8 : -len(BODY)]
        assert protocol.decode(new_head) == msg and json.loads(old_head) == header
        json_us = best_us(json_cycle, header, loops, repeats)
        msgpack_us = best_us(msgpack_cycle, msg, loops, repeats)
        out[name] = {
            "json_us": json_us,
            "msgpack_us": msgpack_us,
            "speedup": round(json_us / msgpack_us, 2),
            "json_header_bytes": len(old_head),
            "msgpack_header_bytes": len(new_head),
        }
    return out


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def json_echo(sock: socket.socket) -> None:
    """The runner side of the JSON scheme: answer each ``call`` with a ``result``."""
    while True:
        try:
            hlen, blen = _HEAD.unpack(_recv_exact(sock, _HEAD.size))
        except EOFError:
            return
        header = json.loads(_recv_exact(sock, hlen))
        body = _recv_exact(sock, blen) if blen else b""
        reply = {"type": "result", "id": header["id"], "ok": True, "logs": []}
        sock.sendall(json_encode(reply, body))


def msgpack_echo(sock: socket.socket) -> None:
    """The runner side of the msgpack scheme: answer each ``Call`` with a ``Result``."""
    frames = protocol.Frames(sock)  # as the runner reads
    while True:
        try:
            msg, body = frames.recv()
        except EOFError:
            return
        assert isinstance(msg, protocol.Call)
        sock.sendall(protocol.encode(protocol.Result(msg.id, True), body))


async def json_read(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    hlen, blen = _HEAD.unpack(await reader.readexactly(_HEAD.size))
    header = json.loads(await reader.readexactly(hlen))
    body = await reader.readexactly(blen) if blen else b""
    return header, body


async def drive(
    echo: Callable[[socket.socket], None],
    frame: Callable[[], bytes],
    read: Callable[[asyncio.StreamReader], Awaitable[object]],
    n: int,
) -> float:
    """µs per round trip of ``n`` calls, one at a time, against ``echo`` in a thread."""
    parent, child = socket.socketpair()
    thread = threading.Thread(target=echo, args=(child,), daemon=True)
    thread.start()
    reader, writer = await asyncio.open_unix_connection(sock=parent)
    for _ in range(200):
        writer.write(frame())
        await read(reader)
    started = time.perf_counter()
    for _ in range(n):
        writer.write(frame())
        await writer.drain()
        await read(reader)
    elapsed = time.perf_counter() - started
    writer.close()
    await writer.wait_closed()
    thread.join(5)
    child.close()
    return elapsed / n * 1e6


def round_trip(n: int, repeats: int) -> dict[str, Any]:
    header, msg = CASES["call"]

    def old_frame() -> bytes:
        return json_encode(header, BODY)

    def new_frame() -> bytes:
        return protocol.encode(msg, BODY)

    json_us = min(asyncio.run(drive(json_echo, old_frame, json_read, n)) for _ in range(repeats))
    msgpack_us = min(
        asyncio.run(drive(msgpack_echo, new_frame, protocol.read, n)) for _ in range(repeats)
    )
    return {
        "json_us": round(json_us, 2),
        "msgpack_us": round(msgpack_us, 2),
        "speedup": round(json_us / msgpack_us, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/ipc.py")
    parser.add_argument("--loops", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--round-trips", type=int, default=20_000)
    args = parser.parse_args()
    print("codec ...", file=sys.stderr)
    codec_figures = codec(args.loops, args.repeats)
    print("round trips ...", file=sys.stderr)
    trips = round_trip(args.round_trips, args.repeats)
    result = {
        "bench": "ipc",
        "loops": args.loops,
        "repeats": args.repeats,
        "round_trips": args.round_trips,
        "codec": codec_figures,
        "round_trip": trips,
        "machine": {
            "python": platform.python_version(),
            "msgspec": msgspec.__version__,
            "cpus": len(os.sched_getaffinity(0)),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
