"""Runner process main: ``python -m klieg._runtime.runner --fd N --code DIR --spec FILE``.

Started by a worker with the env's own interpreter and one end of a socketpair (fd N). Loads
the function, runs ``setup()`` once, says ``ready`` (or ``setup_failed`` and exits), then serves
``call`` messages one at a time until ``shutdown`` or the socket closes. See protocol.py.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import traceback
from pathlib import Path

from klieg._runtime import logs, protocol
from klieg._runtime.loader import Target
from klieg.exceptions import AppError, KliegError
from klieg.types import FunctionSpec


def _error(exc: BaseException) -> dict[str, object]:
    if isinstance(exc, KliegError):
        out = exc.to_dict()
    else:
        out = {"detail": f"{type(exc).__name__}: {exc}", "error_type": AppError.__name__}
    out["traceback"] = "".join(traceback.format_exception(exc))
    return out


def serve(sock: socket.socket, code_dir: Path, spec: FunctionSpec) -> int:
    sink = logs.install()
    try:
        target = Target(code_dir, spec)
        target.setup()
    except BaseException as exc:  # setup may raise anything, including SystemExit
        traceback.print_exc()
        logs.flush_streams()
        err = _error(exc)
        err["error_type"] = "SetupError"
        err["detail"] = f"setup failed: {type(exc).__name__}: {exc}"
        sock.sendall(protocol.encode({"type": "setup_failed", "error": err, "logs": sink.drain()}))
        return 1
    logs.flush_streams()
    sink.drain()
    sock.sendall(protocol.encode({"type": "ready", "pid": os.getpid()}))
    while True:
        try:
            header, body = protocol.recv(sock)
        except EOFError:
            return 0
        if header.get("type") == "shutdown":
            target.teardown()
            return 0
        if header.get("type") != "call":
            continue
        reply: dict[str, object] = {"type": "result", "id": header.get("id")}
        out = b""
        try:
            out = target.call(str(header.get("endpoint", "/")), body)
            reply["ok"] = True
        except Exception as exc:
            if not isinstance(exc, KliegError) or isinstance(exc, AppError):
                traceback.print_exc()
            reply["ok"] = False
            reply["error"] = _error(exc)
        logs.flush_streams()
        reply["logs"] = sink.drain()
        sock.sendall(protocol.encode(reply, out))


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
