"""A TCP proxy on loopback that can slow or drop what passes through it (in front of S3), or
balance connections over several upstreams (in front of a fleet's gateways).

``delay_s``: each chunk a client sends waits that long before it is forwarded; ``dropping``:
new connections are closed at once and open ones are cut. With several upstream ports each new
connection goes to the next one that accepts it (round robin); ``connections`` counts them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class FaultyProxy:
    def __init__(self, upstream_port: int | list[int]) -> None:
        self.upstream_ports = [upstream_port] if isinstance(upstream_port, int) else upstream_port
        self.connections = dict.fromkeys(self.upstream_ports, 0)
        self._next = 0
        self.delay_s = 0.0
        self.dropping = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def drop(self, on: bool) -> None:
        self.dropping = on
        if on:
            with self._lock:
                for sock in list(self._open):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.drop(True)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.dropping:
                client.close()
                continue
            upstream = self._connect()
            if upstream is None:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        """A connection to the next upstream that takes one (None: none does)."""
        ports = self.upstream_ports
        for k in range(len(ports)):
            port = ports[(self._next + k) % len(ports)]
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                continue
            upstream.settimeout(None)
            self._next = (self._next + k + 1) % len(ports)
            self.connections[port] += 1
            return upstream
        return None

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                if outbound and self.delay_s:
                    time.sleep(self.delay_s)
                if self.dropping:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with self._lock:
                    self._open.discard(sock)
                sock.close()
