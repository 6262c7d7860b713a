"""Transports: the interface the runtime drives (``base``), WebSocket and long-poll, and the choice."""

from .base import FrameKey, Outgoing, Receipt, SessionInfo, TlsSettings, Transport, TransportError
from .handshake import HelloAck, read_hello_ack
from .longpoll import LongPollTransport
from .select import TransportChoice
from .websocket import Connection, WebSocketTransport

__all__ = [
    "Connection",
    "FrameKey",
    "HelloAck",
    "LongPollTransport",
    "Outgoing",
    "Receipt",
    "SessionInfo",
    "TlsSettings",
    "Transport",
    "TransportChoice",
    "TransportError",
    "WebSocketTransport",
    "read_hello_ack",
]
