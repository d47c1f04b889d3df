"""Runner IPC frames: every message round-trips, bad frames raise, errors keep class and status."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator

import msgspec
import pytest

from klieg import exceptions
from klieg._runtime import protocol
from klieg._runtime.protocol import (
    Batch,
    Call,
    Chunk,
    Log,
    Media,
    Ready,
    Result,
    SetupFailed,
    Shutdown,
    WireError,
)

pytestmark = pytest.mark.timeout(30)

LINE = {"message": "hi", "level": "INFO", "source": "stdout", "timestamp": "2025-01-01T00:00:00"}
MESSAGES: list[tuple[protocol.Message, bytes]] = [
    (Ready(4242), b""),
    (SetupFailed(WireError("setup failed: boom", "SetupError", "Traceback..."), [LINE]), b""),
    (Call("r1", "/echo", "kc1.t.1.sig"), b'{"text": "hi"}'),
    (Call("r2"), b""),
    (Batch(["a", "b"], [2, 3], "/b", ["t1", "t2"]), b"{}[1]"),
    (Log("a", LINE, ["a", "b"]), b""),
    (Log("r1", LINE), b""),
    (Chunk("r1"), b'{"i": 0}'),
    (Media("r1", "0" * 24, "image/png", "out.png"), b"\x89PNG\r\n\x1a\n"),
    (Result("r1", True, None, [LINE]), b'{"text": "hi"}'),
    (Result("r1", False, WireError([{"loc": ["body", "x"]}], "ValidationError")), b""),
    (Shutdown(), b""),
]


def frame(head: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">II", len(head), len(body)) + head + body


@pytest.fixture()
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


async def read_all(data: bytes, n: int) -> list[tuple[protocol.Message, bytes]]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return [await protocol.read(reader) for _ in range(n)]


@pytest.mark.parametrize(("msg", "body"), MESSAGES, ids=lambda v: type(v).__name__)
def test_every_message_round_trips_with_its_body_untouched(
    pair: tuple[socket.socket, socket.socket], msg: protocol.Message, body: bytes
) -> None:
    a, b = pair
    a.sendall(protocol.encode(msg, body))
    assert protocol.recv(b) == (msg, body)
    assert asyncio.run(read_all(protocol.encode(msg, body), 1)) == [(msg, body)]


def test_the_header_is_tagged_msgpack() -> None:
    data = protocol.encode(Call("r1", "/x"), b"{}")
    hlen, blen = struct.unpack(">II", data[:8])
    assert blen == 2 and data[8 + hlen :] == b"{}"
    assert msgspec.msgpack.decode(data[8 : 8 + hlen]) == {
        "type": "call",
        "id": "r1",
        "endpoint": "/x",
    }


def test_frames_in_a_row_keep_their_boundaries() -> None:
    data = b"".join(protocol.encode(msg, body) for msg, body in MESSAGES)
    assert asyncio.run(read_all(data, len(MESSAGES))) == MESSAGES


@pytest.mark.parametrize(
    "head",
    [
        msgspec.msgpack.encode({"type": "hello"}),
        msgspec.msgpack.encode({"id": "r1"}),
        msgspec.msgpack.encode({"type": "ready"}),
        msgspec.msgpack.encode({"type": "result", "id": "r1", "ok": "yes"}),
        msgspec.msgpack.encode([1, 2]),
        b"\xc1",
        b'{"type": "ready", "pid": 1}',
    ],
    ids=["unknown-type", "no-type", "missing-field", "wrong-type", "not-a-map", "bad", "json"],
)
def test_a_header_that_is_no_message_raises_and_the_next_frame_reads(
    pair: tuple[socket.socket, socket.socket], head: bytes
) -> None:
    a, b = pair
    a.sendall(frame(head, b"{}") + protocol.encode(Ready(1)))
    with pytest.raises(protocol.ProtocolError, match="malformed frame header"):
        protocol.recv(b)
    assert protocol.recv(b) == (Ready(1), b"")
    with pytest.raises(protocol.ProtocolError):
        asyncio.run(read_all(frame(head), 1))


def test_a_truncated_frame_is_eof(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    whole = protocol.encode(Chunk("r1"), b"0123456789")
    a.sendall(whole[:-3])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError):
        protocol.recv(b)
    with pytest.raises(EOFError):
        asyncio.run(read_all(whole[:-3], 1))
    with pytest.raises(EOFError):
        asyncio.run(read_all(b"", 1))


def test_buffered_frames_read_back_to_back_and_large_ones_whole(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    large = bytes(range(256)) * 1024  # over Frames.CHUNK and over SPLIT_READ
    sent = [*MESSAGES, (Chunk("r1"), large), (Ready(2), b"")]
    data = b"".join(protocol.encode(msg, body) for msg, body in sent)
    writer = threading.Thread(target=a.sendall, args=(data,))
    writer.start()
    frames = protocol.Frames(b)
    assert [frames.recv() for _ in sent] == sent
    writer.join(5)
    assert asyncio.run(read_all(data, len(sent))) == sent
    a.sendall(frame(b"\xc1", b"{}") + protocol.encode(Ready(3)))
    with pytest.raises(protocol.ProtocolError):
        frames.recv()
    assert frames.recv() == (Ready(3), b""), "the frame after a bad header reads"
    whole = protocol.encode(Chunk("r1"), b"0123456789")
    a.sendall(whole[:-3])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError):
        frames.recv()


def test_a_frame_over_max_frame_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    big = struct.pack(">II", 16, protocol.MAX_FRAME)
    a.sendall(big)
    with pytest.raises(EOFError, match="too large"):
        protocol.recv(b)
    with pytest.raises(protocol.ProtocolError, match="MAX_FRAME"):
        asyncio.run(read_all(big, 1))


@pytest.mark.parametrize(
    "exc",
    [
        exceptions.NotFoundError("no such path /x"),
        exceptions.ValidationError([{"loc": ["body", "text"], "msg": "Field required"}]),
        exceptions.RequestCancelledError("request r1 cancelled"),
        exceptions.SetupError("setup failed: RuntimeError: boom"),
        exceptions.QueueFullError("full", queued=3),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_keep_their_class_status_and_detail(exc: exceptions.KliegError) -> None:
    try:
        raise exc
    except exceptions.KliegError as raised:
        wire = WireError.from_exception(raised)
    assert wire.traceback is not None and type(exc).__name__ in wire.traceback
    data = protocol.encode(Result("r1", False, wire))
    got, _ = asyncio.run(read_all(data, 1))[0]
    assert isinstance(got, Result) and got.error == wire
    back = got.error.to_exception()
    assert type(back) is type(exc)
    assert back.status_code == type(exc).status_code
    assert back.to_dict() == exc.to_dict()


def test_other_exceptions_cross_as_app_errors() -> None:
    wire = WireError.from_exception(ValueError("cannot handle this"))
    assert (wire.detail, wire.error_type) == ("ValueError: cannot handle this", "AppError")
    back = wire.to_exception()
    assert type(back) is exceptions.AppError and back.status_code == 500


def test_an_error_type_the_sdk_does_not_define_keeps_its_name() -> None:
    back = WireError("env broke", "EnvResolutionError").to_exception()
    assert type(back) is exceptions.KliegError and back.status_code == 500
    assert back.to_dict() == {"detail": "env broke", "error_type": "EnvResolutionError"}
