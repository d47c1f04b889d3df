"""Runner process main: ``python -m klieg._runtime.runner --fd N --code DIR --spec FILE``.

Started by a worker with the env's own interpreter and one end of a socketpair (fd N). Loads
the function, runs ``setup()`` once, says ``ready`` (or ``setup_failed`` and exits), then serves
``call`` messages one at a time until ``shutdown`` or the socket closes. See protocol.py.
While a call runs, its log lines go out as ``log`` frames and a generator endpoint's items as
``chunk`` frames; SIGUSR1 (CANCEL_SIGNAL) interrupts the endpoint code with
RequestCancelledError, and the runner goes on serving.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path

from klieg import media
from klieg._runtime import context, logs, protocol
from klieg._runtime.loader import Target
from klieg.exceptions import AppError, KliegError, RequestCancelledError
from klieg.types import FunctionSpec

_MEDIA_TOKEN = re.compile(re.escape(media.PENDING_SCHEME.encode()) + rb"([0-9a-f]{24})")
CANCEL_SIGNAL = signal.SIGUSR1
"""The worker sends this to interrupt the running request (raises RequestCancelledError in it)."""


def _error(exc: BaseException) -> dict[str, object]:
    if isinstance(exc, KliegError):
        out = exc.to_dict()
    else:
        out = {"detail": f"{type(exc).__name__}: {exc}", "error_type": AppError.__name__}
    out["traceback"] = "".join(traceback.format_exception(exc))
    return out


class _Channel:
    """The runner's end of the socket. Sends are serialised (log lines come from any thread) and
    run with the cancel signal blocked, so a cancellation never cuts a frame in half."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, header: protocol.Header, body: bytes = b"") -> None:
        frame = protocol.encode(header, body)
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
            header = {"type": "media", "id": request_id, "token": token,
                      "content_type": content_type, "file_name": file_name}  # fmt: skip
            channel.send(header, data)


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
            channel.send({"type": "chunk", "id": request_id}, item)
            last = item
        return last
    finally:
        _Running.request_id = None
        media.PENDING.clear()


def _serve_call(
    channel: _Channel, sink: logs.LogSink, target: Target, header: protocol.Header, body: bytes
) -> tuple[protocol.Header, bytes]:
    request_id = str(header.get("id"))
    reply: protocol.Header = {"type": "result", "id": request_id}
    out = b""
    sink.emit = lambda line: channel.send({"type": "log", "id": request_id, "line": line})
    context.set_token(header.get("token"))
    try:
        out = _run(channel, target, request_id, str(header.get("endpoint", "/")), body)
        reply["ok"] = True
    except Exception as exc:
        _Running.request_id = None
        if not isinstance(exc, KliegError) or isinstance(exc, AppError):
            traceback.print_exc()
        reply["ok"] = False
        reply["error"] = _error(exc)
    finally:
        context.clear()
        logs.flush_streams()
        sink.emit = None
    reply["logs"] = sink.drain()
    return reply, out


def _serve_batch(
    channel: _Channel, sink: logs.LogSink, target: Target, header: protocol.Header, body: bytes
) -> None:
    """Run a ``batch`` message and send one ``result`` per request, in order. Cancelling (the
    signal) cancels the whole batch: the worker signals only a batch of one."""
    ids = [str(i) for i in header.get("ids") or []]
    sizes = [int(n) for n in header.get("sizes") or []]
    bodies, at = [], 0
    for size in sizes:
        bodies.append(body[at : at + size])
        at += size
    sink.emit = lambda line: channel.send({"type": "log", "id": ids[0], "ids": ids, "line": line})
    context.set_batch_tokens([str(t) for t in header.get("tokens") or []])
    try:
        _Running.request_id = ",".join(ids)
        endpoint = target.endpoint(str(header.get("endpoint", "/")))
        results: list[bytes | KliegError] = list(endpoint.batch(bodies))
    except Exception as exc:
        _Running.request_id = None
        if not isinstance(exc, KliegError) or isinstance(exc, AppError):
            traceback.print_exc()
        failed = exc if isinstance(exc, KliegError) else AppError(f"{type(exc).__name__}: {exc}")
        results = [failed] * len(ids)
    finally:
        _Running.request_id = None
        context.clear()
        logs.flush_streams()
        sink.emit = None
    lines = sink.drain()
    try:
        for request_id, result in zip(ids, results, strict=True):
            reply: protocol.Header = {"type": "result", "id": request_id, "logs": lines}
            if isinstance(result, KliegError):
                reply.update(ok=False, error=_error(result))
                channel.send(reply)
            else:
                _ship_media(channel, request_id, result)
                reply["ok"] = True
                channel.send(reply, result)
    finally:
        media.PENDING.clear()


def serve(sock: socket.socket, code_dir: Path, spec: FunctionSpec) -> int:
    channel = _Channel(sock)
    sink = logs.install()
    media.PENDING.active = True
    signal.signal(CANCEL_SIGNAL, _on_cancel)
    try:
        target = Target(code_dir, spec)
        target.setup()
    except BaseException as exc:  # setup may raise anything, including SystemExit
        traceback.print_exc()
        logs.flush_streams()
        err = _error(exc)
        err["error_type"] = "SetupError"
        err["detail"] = f"setup failed: {type(exc).__name__}: {exc}"
        channel.send({"type": "setup_failed", "error": err, "logs": sink.drain()})
        return 1
    logs.flush_streams()
    sink.drain()
    channel.send({"type": "ready", "pid": os.getpid()})
    while True:
        try:
            header, body = protocol.recv(sock)
        except EOFError:
            return 0
        if header.get("type") == "shutdown":
            target.teardown()
            return 0
        if header.get("type") == "batch":
            _serve_batch(channel, sink, target, header, body)
            continue
        if header.get("type") != "call":
            continue
        try:
            reply, out = _serve_call(channel, sink, target, header, body)
        except RequestCancelledError as exc:  # the signal landed just as the call ended
            reply, out = (
                {
                    "type": "result",
                    "id": header.get("id"),
                    "ok": False,
                    "error": _error(exc),
                    "logs": sink.drain(),
                },
                b"",
            )
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
