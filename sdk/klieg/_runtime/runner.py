"""Runner process main: ``python -m klieg._runtime.runner --fd N --code DIR --spec FILE``.

Started by a worker with the env's own interpreter and one end of a socketpair (fd N). Loads
the function, runs ``setup()`` once, says ``ready`` (or ``setup_failed`` and exits), then serves
``call`` and ``batch`` messages one at a time until ``shutdown`` or the socket closes (frames
whose header is no message are skipped). An app class's optional ``provide_hints()`` is asked
after setup (its answer rides on ``ready``) and after each call or batch (on its last
``result``), inside that request's log capture. See protocol.py. While a call runs, its log lines go
out as ``log`` frames and a generator endpoint's items as ``chunk`` frames; SIGUSR1
(CANCEL_SIGNAL) interrupts the endpoint code with RequestCancelledError, and the runner goes on
serving.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from klieg import media
from klieg._runtime import context, logs, protocol
from klieg._runtime.loader import Target
from klieg._runtime.protocol import WireError
from klieg.exceptions import AppError, KliegError, RequestCancelledError, SetupError
from klieg.types import FunctionSpec

_MEDIA_TOKEN = re.compile(re.escape(media.PENDING_SCHEME.encode()) + rb"([0-9a-f]{24})")
CANCEL_SIGNAL = signal.SIGUSR1
"""The worker sends this to interrupt the running request (raises RequestCancelledError in it)."""


class _Channel:
    """The runner's end of the socket. Sends are serialised (log lines come from any thread).
    The cancel signal's handler raises only in the main thread while a request's code runs
    (``_Running``); a send from there runs with the signal blocked, so a cancellation never
    cuts a frame in half. Elsewhere the signal only interrupts the system call, which is
    retried: no blocking needed (two system calls saved on each result)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.main = threading.main_thread().ident

    def send(self, msg: protocol.Message, body: bytes = b"") -> None:
        frame = protocol.encode(msg, body)
        if _Running.request_id is None or threading.get_ident() != self.main:
            with self.lock:
                self.sock.sendall(frame)
            return
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {CANCEL_SIGNAL})
        try:
            with self.lock:
                self.sock.sendall(frame)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Running:
    """The request whose endpoint code is running now; the cancel signal interrupts only it."""

    request_id: str | None = None


def _on_cancel(signum: int, frame: object) -> None:
    if _Running.request_id is not None:
        raise RequestCancelledError(f"request {_Running.request_id} cancelled")


def _ship_media(channel: _Channel, request_id: str, body: bytes) -> None:
    """Send the bytes of every media placeholder ``body`` refers to, ahead of ``body`` itself."""
    for raw in dict.fromkeys(_MEDIA_TOKEN.findall(body)):
        token = raw.decode()
        item = media.PENDING.take(token)
        if item is not None:
            data, content_type, file_name = item
            channel.send(protocol.Media(request_id, token, content_type, file_name), data)


def _run(channel: _Channel, target: Target, request_id: str, path: str, body: bytes) -> bytes:
    """Run one call; chunks of a generator endpoint are sent as they come, the last is returned.
    Media an output refers to is sent first (``media`` frames)."""
    endpoint = target.endpoint(path)
    _Running.request_id = request_id
    try:
        if not endpoint.streaming:
            out = endpoint(body)
            _ship_media(channel, request_id, out)
            return out
        last = b"null"
        for item in endpoint.items(body):
            _ship_media(channel, request_id, item)
            channel.send(protocol.Chunk(request_id), item)
            last = item
        return last
    finally:
        _Running.request_id = None
        media.PENDING.clear()


def _serve_call(
    channel: _Channel, sink: logs.LogSink, target: Target, call: protocol.Call, body: bytes
) -> tuple[protocol.Result, bytes]:
    request_id = call.id
    out = b""
    error: WireError | None = None
    hints: list[str] | None = None
    sink.emit = lambda line: channel.send(protocol.Log(request_id, line))
    context.set_token(call.token)
    try:
        out = _run(channel, target, request_id, call.endpoint, body)
    except Exception as exc:
        _Running.request_id = None
        if not isinstance(exc, KliegError) or isinstance(exc, AppError):
            traceback.print_exc()
        error = WireError.from_exception(exc)
    finally:
        hints = target.hints()
        context.clear()
        logs.flush_streams()
        sink.emit = None
    return protocol.Result(request_id, error is None, error, sink.drain(), hints), out


def _serve_batch(
    channel: _Channel, sink: logs.LogSink, target: Target, batch: protocol.Batch, body: bytes
) -> None:
    """Run a ``batch`` message and send one ``result`` per request, in order. Cancelling (the
    signal) cancels the whole batch: the worker signals only a batch of one."""
    ids = batch.ids
    bodies = batch.split(body)
    sink.emit = lambda line: channel.send(protocol.Log(ids[0], line, ids))
    context.set_batch_tokens(batch.tokens)
    try:
        _Running.request_id = ",".join(ids)
        endpoint = target.endpoint(batch.endpoint)
        results: list[bytes | KliegError] = list(endpoint.batch(bodies))
    except Exception as exc:
        _Running.request_id = None
        if not isinstance(exc, KliegError) or isinstance(exc, AppError):
            traceback.print_exc()
        failed = exc if isinstance(exc, KliegError) else AppError(f"{type(exc).__name__}: {exc}")
        results = [failed] * len(ids)
    finally:
        _Running.request_id = None
        hints = target.hints()
        context.clear()
        logs.flush_streams()
        sink.emit = None
    lines = sink.drain()
    try:
        for i, (request_id, result) in enumerate(zip(ids, results, strict=True)):
            last = hints if i == len(ids) - 1 else None
            if isinstance(result, KliegError):
                error = WireError.from_exception(result)
                channel.send(protocol.Result(request_id, False, error, lines, last))
            else:
                _ship_media(channel, request_id, result)
                channel.send(protocol.Result(request_id, True, None, lines, last), result)
    finally:
        media.PENDING.clear()


def serve(sock: socket.socket, code_dir: Path, spec: FunctionSpec) -> int:
    channel = _Channel(sock)
    sink = logs.install()
    media.PENDING.active = True
    signal.signal(CANCEL_SIGNAL, _on_cancel)
    try:
        target = Target(code_dir, spec)
        began = time.perf_counter()
        target.setup()
        setup_s = time.perf_counter() - began
    except BaseException as exc:  # setup may raise anything, including SystemExit
        traceback.print_exc()
        logs.flush_streams()
        trace = "".join(traceback.format_exception(exc))
        detail = f"setup failed: {type(exc).__name__}: {exc}"
        error = WireError(detail, SetupError.__name__, trace)
        channel.send(protocol.SetupFailed(error, sink.drain()))
        return 1
    hints = target.hints()
    logs.flush_streams()
    sink.drain()
    channel.send(protocol.Ready(os.getpid(), round(setup_s, 6), hints))
    frames = protocol.Frames(sock)
    while True:
        try:
            msg, body = frames.recv()
        except protocol.ProtocolError:
            continue
        except EOFError:
            return 0
        if isinstance(msg, protocol.Shutdown):
            target.teardown()
            return 0
        if isinstance(msg, protocol.Batch):
            _serve_batch(channel, sink, target, msg, body)
            continue
        if not isinstance(msg, protocol.Call):
            continue
        try:
            reply, out = _serve_call(channel, sink, target, msg, body)
        except RequestCancelledError as exc:  # the signal landed just as the call ended
            error = WireError.from_exception(exc)
            reply, out = protocol.Result(msg.id, False, error, sink.drain(), target.hints()), b""
        channel.send(reply, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="klieg-runner")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--code", type=Path, required=True)
    parser.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    spec = FunctionSpec.model_validate_json(args.spec.read_text())
    return serve(sock, args.code, spec)


if __name__ == "__main__":
    sys.exit(main())
