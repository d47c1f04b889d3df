"""What a client that could not reach its server (the Kubernetes API server, a Docker engine)
says about it: one line with the innermost cause, not its HTTP library's retry story.

``root_cause(exc)`` follows urllib3's ``reason`` (``MaxRetryError`` -> ``NewConnectionError``)
and Python's exception chain (``__cause__``, ``__context__``) to the innermost ``OSError`` and
gives its words in lower case ("connection refused", "no such file or directory"); an error
chain without one gives its innermost exception's class name (``ReadTimeoutError``).
"""

from __future__ import annotations


def root_cause(exc: BaseException) -> str:
    """The innermost reason ``exc`` carries, as a short phrase."""
    node: BaseException | None = exc
    last, seen = exc, set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.strerror:
            return node.strerror[:1].lower() + node.strerror[1:]
        last = node
        reason = getattr(node, "reason", None)
        if isinstance(reason, BaseException):
            node = reason
        else:
            node = node.__cause__ or node.__context__ or _first_argument_error(node)
    return type(last).__name__


def _first_argument_error(exc: BaseException) -> BaseException | None:
    """An exception carried as an argument (requests' ``ConnectionError(ProtocolError(...,
    FileNotFoundError(...)))`` carries its causes so)."""
    for arg in exc.args:
        if isinstance(arg, BaseException):
            return arg
        if isinstance(arg, tuple):
            inner = next((a for a in arg if isinstance(a, BaseException)), None)
            if inner is not None:
                return inner
    return None
