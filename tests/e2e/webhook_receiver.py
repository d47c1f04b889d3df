"""A webhook receiver for tests: a stdlib HTTP server on a free 127.0.0.1 port, in a thread.

It records every POST and answers 500 to the first ``fail_first`` deliveries of each request id
(read from the JSON body), 200 after.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    answered: int
    at: float


class Receiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body: dict[str, Any] = json.loads(raw)
                code = receiver._answer(self.path, dict(self.headers.items()), body)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def _answer(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> int:
        with self._lock:
            tries = sum(
                1 for d in self.deliveries if d.body.get("request_id") == body.get("request_id")
            )
            code = 500 if tries < self.fail_first else 200
            headers = {k.lower(): v for k, v in headers.items()}
            self.deliveries.append(Delivery(path, headers, body, code, time.monotonic()))
        return code

    def of(self, request_id: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.body.get("request_id") == request_id]

    def accepted(self, request_id: str) -> list[Delivery]:
        return [d for d in self.of(request_id) if d.answered == 200]


@contextmanager
def receiving(fail_first: int = 0) -> Iterator[Receiver]:
    """A running ``Receiver``; shut down on exit."""
    receiver = Receiver(fail_first)
    thread = threading.Thread(target=receiver._server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver._server.shutdown()
        receiver._server.server_close()
        thread.join(timeout=5)
