"""Transports: the interface the runtime drives (``base``), WebSocket and long-poll, and the choice.

The WebSocket and long-poll modules (websocket-client, http.client) are imported on first use,
by the I/O thread when it connects: ``install_agent`` does not wait for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import FrameKey, Outgoing, Receipt, SessionInfo, TlsSettings, Transport, TransportError

if TYPE_CHECKING:
    from .handshake import HelloAck, read_hello_ack
    from .longpoll import LongPollTransport
    from .select import TransportChoice
    from .websocket import Connection, WebSocketTransport

_LAZY = {
    "Connection": "websocket",
    "HelloAck": "handshake",
    "LongPollTransport": "longpoll",
    "TransportChoice": "select",
    "WebSocketTransport": "websocket",
    "read_hello_ack": "handshake",
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
