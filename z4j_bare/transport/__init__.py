"""Transports: the interface the runtime drives (``base``) and its implementations."""

from .base import FrameKey, Outgoing, Receipt, SessionInfo, TlsSettings, Transport, TransportError
from .handshake import HelloAck, read_hello_ack
from .websocket import Connection, WebSocketTransport

__all__ = [
    "Connection",
    "FrameKey",
    "HelloAck",
    "Outgoing",
    "Receipt",
    "SessionInfo",
    "TlsSettings",
    "Transport",
    "TransportError",
    "WebSocketTransport",
    "read_hello_ack",
]
