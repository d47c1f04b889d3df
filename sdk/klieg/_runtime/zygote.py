"""Zygote main: ``python -m klieg._runtime.zygote --fd N [--preload torch,numpy] [--code app]``.

A zygote is a process of an env's interpreter that has imported the runtime and the modules its
apps declare as preloadable (with the collector off), frozen what it allocated
(``gc.freeze()``), and then only forks: each runner it forks skips the interpreter start and
those imports, and shares their pages with its siblings until it writes to them (the child
turns the collector on and never unfreezes: its collections do not scan the frozen objects).
A revision's own zygote (``App(preload_code=True)``) also imports the revision's modules
(``--code``, after the preloads, from its working directory, the revision's code folder, as a
runner does), so its children find the app's code loaded; an env's zygote runs no app code.
Neither sees a secret, and neither initialises an accelerator (a forked child cannot
re-initialise CUDA): should an imported module do so at import, or start a thread (a fork
copies only the forking thread, with whatever locks the others held), the zygote refuses to
serve and exits. A module that fails to import is reported (``failed``) and left to the child,
which imports it again and fails its setup with the error.

Its control socket (fd N) carries JSON lines; a ``fork`` line comes with one file descriptor
(SCM_RIGHTS), the runner's end of its own socketpair to the worker:

- zygote -> worker, once: ``{"type": "ready", "pid", "preloaded": [...], "failed": {module:
  error}}`` (``preloaded``: the ``--preload`` and ``--code`` modules that imported) or
  ``{"type": "refused", "reason"}`` (then it exits);
- worker -> zygote: ``{"type": "fork", "code", "spec", "cwd", "env": {...}}`` + the fd;
- zygote -> worker: ``{"type": "forked", "pid"}`` per fork, in order, and ``{"type": "exited",
  "pid", "code"}`` when a child ends (``code`` as ``Popen.returncode``: -N for signal N).

The child becomes its own session, takes the environment and working directory it was sent,
reseeds the random generators it inherited, and serves as ``klieg._runtime.runner`` does. The
zygote exits when its control socket closes; its children do not (each ends with its own
socket to the worker).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from klieg._runtime import runner  # the runtime is what every child needs first
from klieg.types import FunctionSpec

ACCELERATOR_LIBRARIES = ("libcuda.so", "libnvidia-ml.so", "libamdhip64.so", "libhsa-runtime64.so")
"""Driver libraries whose presence in the zygote means an accelerator runtime was initialised."""


def accelerator_problem() -> str | None:
    """Why this process must not fork runners, or None: an accelerator initialised (torch says
    so, or a driver library is mapped), or a thread other than the main one runs."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    with_cuda = getattr(cuda, "is_initialized", None)
    if callable(with_cuda) and with_cuda():
        return "CUDA was initialised at import (torch.cuda.is_initialized())"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for lib in ACCELERATOR_LIBRARIES:
        if lib in maps:
            return f"an accelerator driver was loaded at import ({lib})"
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        return f"a thread was started at import ({', '.join(sorted(others))})"
    return None


def preload(modules: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Import each of ``modules``; those that imported, and why the others did not."""
    done: list[str] = []
    failed: dict[str, str] = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # a module may raise anything at import, SystemExit too
            failed[name] = f"{type(exc).__name__}: {exc}"
        else:
            done.append(name)
    return done, failed


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _reseed() -> None:
    """New seeds for the generators a fork copies (``random`` reseeds itself at fork)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.random.default_generator.seed()


def _child(order: dict[str, Any], fd: int, inherited: list[Any]) -> int:
    for thing in inherited:  # the zygote's own sockets and selector are not the runner's
        thing.close()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    gc.enable()  # what the zygote froze stays frozen: a full collection never scans it
    os.environ.clear()
    os.environ.update(order["env"])
    here = os.getcwd()  # ``-m`` put it first on sys.path; a started runner has its cwd there
    os.chdir(order["cwd"])
    sys.path[:] = [order["cwd"] if entry == here else entry for entry in sys.path]
    sys.argv = [runner.__file__]
    _reseed()
    spec = FunctionSpec.model_validate_json(Path(order["spec"]).read_text())
    return runner.serve(socket.socket(fileno=fd), Path(order["code"]), spec)


def _fork(order: dict[str, Any], fd: int, others: list[int], inherited: list[Any]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for other in others:  # the fds of forks still to come are not this child's
                os.close(other)
            code = _child(order, fd, inherited)
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)
    os.close(fd)
    return pid


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _send(control, {"type": "exited", "pid": pid, "code": code})


def serve(control: socket.socket, modules: Sequence[str], code: Sequence[str] = ()) -> int:
    """Preload ``modules``, then the revision's ``code`` modules, then fork on order until the
    control socket closes. The collector is off from the preload on (no collection leaves
    freed holes among the imports' objects for a child to fill) and everything is frozen before
    the first fork: a child's collections, full ones included, never touch the preloaded
    objects, so their pages stay shared."""
    gc.disable()
    done, failed = preload([*modules, *code])
    problem = accelerator_problem()
    if problem is not None:
        _send(control, {"type": "refused", "reason": problem})
        return 1
    gc.freeze()
    wakeup, wakeup_w = socket.socketpair()
    wakeup.setblocking(False)
    wakeup_w.setblocking(False)
    signal.set_wakeup_fd(wakeup_w.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _send(control, {"type": "ready", "pid": os.getpid(), "preloaded": done, "failed": failed})
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wakeup, selectors.EVENT_READ)
    pending = b""
    fds: list[int] = []
    while True:
        for key, _ in selector.select():
            if key.fileobj is wakeup:
                while True:
                    try:
                        if not wakeup.recv(512):
                            break
                    except BlockingIOError:
                        break
                _reap(control)
                continue
            data, got, _, _ = socket.recv_fds(control, 1 << 16, 8)
            if not data:
                return 0
            pending += data
            fds.extend(got)
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                order = json.loads(line)
                if order.get("type") != "fork" or not fds:
                    continue
                fd = fds.pop(0)
                pid = _fork(order, fd, fds, [control, wakeup, wakeup_w, selector])
                _send(control, {"type": "forked", "pid": pid})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="klieg-zygote")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--preload", default="", help="modules to import, comma-separated")
    parser.add_argument("--code", default="", help="the revision's modules, imported last")
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.fd)
    modules = [m for m in args.preload.split(",") if m]
    try:
        return serve(control, modules, [m for m in args.code.split(",") if m])
    except (BrokenPipeError, ConnectionResetError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
