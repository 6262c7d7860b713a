"""The WebSocket transport (websocket-client): ``Connection`` is the socket, ``WebSocketTransport``
the session over it (hello/hello_ack, signed frames, verified frames, receipts).

Owned by the runtime's I/O thread. Only ``abort()`` may be called from another thread: it shuts
the socket down so a blocked send or receive returns at once (used by ``stop()`` against a
black-holed brain).
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any

import websocket

from ..protocol import (
    BackoffClass,
    Frame,
    FrameType,
    classify_close,
    classify_http_status,
    describe_close,
    encode_unsigned,
    new_frame_id,
)
from .base import Outgoing, Receipt, SessionInfo, TlsSettings, Transport, TransportError
from .clock import date_offset
from .handshake import read_hello_ack

# Largest inbound message we accept (the brain's own commands are tiny; 1 MiB like the reference).
MAX_INBOUND_BYTES = 1_048_576
# Statuses a brain itself answers an upgrade with for credentials; any other plain HTTP answer
# comes from something on the path that does not pass WebSocket upgrades.
_AUTH_STATUSES = frozenset({401, 403})
# How long a clean close waits for the brain's close frame (abort() cuts it short).
CLOSE_WAIT_SECONDS = 2.0


class Connection:
    def __init__(self, url: str, token: str, *, timeout: float = 10.0, tls: TlsSettings | None = None) -> None:
        self.url = url
        self._token = token
        self._timeout = timeout
        self._tls = tls or TlsSettings()
        self._ws: websocket.WebSocket | None = None
        self._closing: websocket.WebSocket | None = None
        #: The brain's clock minus ours from the upgrade answer's Date header (None: none usable).
        self.date_offset: float | None = None
        self.handshake_phase = True
        #: Monotonic time the last WebSocket frame of any kind (pong included) was read.
        self.heard_at = 0.0

    def __repr__(self) -> str:
        return f"Connection(url={self.url!r}, open={self._ws is not None})"

    def open(self) -> None:
        sslopt = {"context": self._tls.context()} if self.url.startswith("wss://") else {}
        try:
            self._ws = websocket.create_connection(
                self.url,
                header=[f"Authorization: Bearer {self._token}"],
                timeout=self._timeout,
                sslopt=sslopt,
                enable_multithread=True,
                skip_utf8_validation=True,
            )
            self.date_offset = date_offset((self._ws.getheaders() or {}).get("date"), time.time())
        except websocket.WebSocketBadStatusException as exc:
            status = getattr(exc, "status_code", None)
            raise TransportError(f"upgrade refused with HTTP {status}", classify_http_status(status),
                                 upgrade_refused=status not in _AUTH_STATUSES) from None
        except ssl.SSLError as exc:
            raise TransportError(f"TLS failure: {exc.reason or type(exc).__name__}") from None
        except (OSError, websocket.WebSocketException) as exc:
            timed_out = isinstance(exc, (TimeoutError, websocket.WebSocketTimeoutException))
            raise TransportError(f"cannot connect: {type(exc).__name__}: {exc}", timed_out=timed_out) from None

    @property
    def is_open(self) -> bool:
        return self._ws is not None and self._ws.connected

    def send(self, data: bytes) -> None:
        ws = self._require()
        try:
            ws.send(data, opcode=websocket.ABNF.OPCODE_BINARY)
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportError(f"send failed: {type(exc).__name__}") from None

    def ping(self) -> None:
        try:
            self._require().ping()
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportError(f"ping failed: {type(exc).__name__}") from None

    def readable(self, timeout: float) -> bool:
        ws = self._require()
        sock = ws.sock
        if sock is None:
            raise TransportError("socket closed")
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            ready, _, _ = select.select([sock], [], [], max(0.0, timeout))
        except (OSError, ValueError):
            raise TransportError("socket closed") from None
        return bool(ready)

    def recv(self, timeout: float) -> bytes | None:
        """One message, or None if nothing arrived within ``timeout``."""
        if not self.readable(timeout):
            return None
        ws = self._require()
        try:
            opcode, frame = ws.recv_data_frame(True)
        except websocket.WebSocketTimeoutException:
            return None
        except websocket.WebSocketConnectionClosedException:
            raise TransportError(describe_close(None)) from None
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportError(f"receive failed: {type(exc).__name__}") from None
        self.heard_at = time.monotonic()  # pongs and pings count: the brain is there
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else None
            self.close(code or 1000)
            backoff = classify_close(code, during_handshake=self.handshake_phase)
            raise TransportError(f"brain closed the session ({code}): {describe_close(code)}", backoff, code)
        if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
            data = frame.data
            if len(data) > MAX_INBOUND_BYTES:
                raise TransportError(f"inbound message of {len(data)} bytes exceeds {MAX_INBOUND_BYTES}", BackoffClass.PROTOCOL)
            return data if isinstance(data, bytes) else data.encode("utf-8")
        return None  # ping/pong handled by the library

    def close(self, code: int = 1000) -> None:
        ws = self._ws
        if ws is None:
            return
        # The socket stays reachable for abort() while the close handshake waits for the peer:
        # a brain that does not answer (stopped, or busy ingesting) must not hold stop() or exit.
        self._closing = ws
        self._ws = None
        try:
            ws.settimeout(CLOSE_WAIT_SECONDS)
            ws.close(status=code, timeout=CLOSE_WAIT_SECONDS)
        except Exception:  # noqa: BLE001 - closing a dead socket must not raise
            pass
        finally:
            self._closing = None
        try:
            ws.shutdown()
        except Exception:  # noqa: BLE001
            pass

    def abort(self) -> None:
        """Thread-safe: wake any blocked I/O by shutting the socket down."""
        for ws in (self._ws, self._closing):
            sock = ws.sock if ws is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _require(self) -> websocket.WebSocket:
        if self._ws is None:
            raise TransportError("not connected")
        return self._ws


class WebSocketTransport(Transport):
    name = "ws"

    def __init__(self, url: str, token: str, key: bytes, *, timeout: float = 10.0, tls: TlsSettings | None = None,
                 heartbeat_default: float = 10.0, stopping: threading.Event | None = None) -> None:
        super().__init__(key)
        self.url = url
        self._conn = Connection(url, token, timeout=timeout, tls=tls)
        self._heartbeat_default = heartbeat_default
        self._stopping = stopping or threading.Event()

    def __repr__(self) -> str:
        return f"WebSocketTransport(url={self.url!r}, open={self._conn.is_open})"

    def open(self) -> None:
        self._conn.open()

    def handshake(self, hello: Mapping[str, Any], timeout: float) -> SessionInfo:
        self._conn.send(encode_unsigned(FrameType.HELLO, new_frame_id("hello_", 16), dict(hello)))
        deadline = time.monotonic() + timeout
        sent_at = time.time()
        data = None
        while data is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no hello_ack within {timeout:.0f} s")
            data = self._conn.recv(min(remaining, 0.25))
            if data is None and self._stopping.is_set():
                raise TimeoutError("stopping during the handshake")
        try:
            ack = read_hello_ack(data, default_heartbeat=self._heartbeat_default)
        except TransportError:
            self._conn.close(1002)
            raise
        self._conn.handshake_phase = False
        # hello_ack's ts is the brain's own clock to the microsecond; the upgrade's Date (whole
        # seconds, and maybe a proxy's) only when the ack has none.
        if ack.brain_time is not None:
            offset, source = ack.brain_time - (sent_at + time.time()) / 2, "hello_ack"
        else:
            offset, source = self._conn.date_offset, "date"
        return self._bind(SessionInfo(self.name, ack.binding, ack.heartbeat_interval, ack.max_frame,
                                      ack.brain_version, offset, source if offset is not None else None))

    def send(self, frame: Outgoing) -> None:
        data = self._sign(frame)
        if data is None:
            return
        self._conn.send(data)
        if frame.type != FrameType.EVENT_BATCH.value:
            # The brain acknowledges only event batches; anything else is delivered once written.
            self._add_receipt(Receipt(frame.key))

    def receive(self, timeout: float) -> Frame | Receipt | None:
        receipt = self._next_receipt()
        if receipt is not None:
            return receipt
        data = self._conn.recv(timeout)
        self.last_heard = max(self.last_heard, self._conn.heard_at)
        if data is None:
            return None
        frame = self._verify(data)
        return self._ack_receipt(frame) or frame

    def keepalive(self) -> bool:
        self._conn.ping()
        return True

    def close(self, code: int = 1000) -> None:
        self._conn.close(code)

    def abort(self) -> None:
        self._conn.abort()
