"""A forwarding proxy on 127.0.0.1 that can refuse WebSocket upgrades, like a corporate proxy.

While ``refuse_upgrades`` is set, a request carrying ``Upgrade: websocket`` is answered by the
proxy itself with ``status`` (default 400); everything else (the long-poll HTTP requests, and
upgrades once it is cleared) is piped to the upstream port byte for byte.
"""

from __future__ import annotations

import socket
import threading


class UpgradeRefusingProxy:
    def __init__(self, upstream_port: int, *, status: int = 400) -> None:
        self.upstream_port = upstream_port
        self.status = status
        self.refuse_upgrades = True
        self.refused = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> UpgradeRefusingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._server.close()
        for s in list(self._socks):
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._socks.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            head += chunk
        if self.refuse_upgrades and b"upgrade: websocket" in head.lower():
            self.refused += 1
            client.sendall(f"HTTP/1.1 {self.status} Refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self._socks.append(upstream)
        upstream.sendall(head)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
