"""A TCP relay that records every byte it passes: what an eavesdropper on the link would see."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading

from tests.support.registry import free_port


class Relay:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.seen = bytearray()
        self._lock = threading.Lock()
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(relay.target)
                pump = threading.Thread(target=relay._pump, args=(upstream, self.request), daemon=True)
                pump.start()
                relay._pump(self.request, upstream)
                pump.join()
                upstream.close()

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def captured(self) -> bytes:
        with self._lock:
            return bytes(self.seen)
