"""Which transport each connect attempt opens: ``transport`` = ``ws``, ``longpoll`` or ``auto``.

``auto`` opens WebSocket. When the upgrade itself is refused by something on the path (a plain
HTTP answer that is not an authentication failure: a proxy that does not pass upgrades or
strips the Upgrade header), the same attempt opens long-poll instead, a warning is logged once,
and WebSocket is tried again every ``ws_retry_seconds`` (the running long-poll session ends
with a ``reconnect`` for that; if the upgrade is refused again, long-poll resumes at once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..logs import get_logger
from ..protocol import utc_text
from .base import TlsSettings, Transport, TransportError
from .clock import BrainClock

if TYPE_CHECKING:
    from ..config import Config
    from .longpoll import LongPollTransport
    from .websocket import WebSocketTransport

log = get_logger(__name__)

WS_RETRY_SECONDS = 600.0


def _wall(ts: float) -> str:
    return utc_text(ts)


class TransportChoice:
    def __init__(self, config: Config, key: bytes, stopping: threading.Event, clock: BrainClock | None = None) -> None:
        self.mode = config.transport
        #: The brain's clock, measured at each connect and shared by every transport opened here.
        self.clock = clock or BrainClock()
        self._config = config
        self._key = key
        self._stopping = stopping
        #: How long ``auto`` stays on long-poll before it tries WebSocket again.
        self.ws_retry_seconds = WS_RETRY_SECONDS
        self._fallback_reason: str | None = None
        self._fallback_at = 0.0  # monotonic time of the last refused upgrade
        self._fallback_wall = 0.0
        self._warned = False

    def __repr__(self) -> str:
        return f"TransportChoice(mode={self.mode!r}, fallback={self._fallback_reason is not None})"

    def open(self, hold: Callable[[Transport], None]) -> Transport:
        """Build and open this attempt's transport; ``hold`` learns each one before it blocks."""
        if self.mode == "longpoll":
            return self._open(self.longpoll(), hold)
        if self.mode == "ws":
            return self._open(self.websocket(), hold)
        if self._fallback_reason is not None and not self._websocket_due():
            return self._open(self.longpoll(), hold)
        try:
            transport = self._open(self.websocket(), hold)
        except TransportError as exc:
            if not exc.upgrade_refused:
                raise
            self._fall_back(str(exc))
            return self._open(self.longpoll(), hold)
        if self._fallback_reason is not None:
            log.warning("transport.websocket_restored", summary="WebSocket upgrades pass again; leaving long-poll",
                        after_s=round(time.monotonic() - self._fallback_at, 1))
            self._fallback_reason = None
        return transport

    def should_leave(self, transport: Transport) -> str | None:
        """Why a running session should end to try WebSocket again (auto on long-poll), or None."""
        if self.mode != "auto" or transport.name != "longpoll" or not self._websocket_due():
            return None
        return f"auto: trying WebSocket again after {self.ws_retry_seconds:g} s on long-poll"

    @property
    def fallback(self) -> dict[str, Any] | None:
        """For health() and doctor: since when and why auto uses long-poll, and the next WebSocket try."""
        if self._fallback_reason is None:
            return None
        return {"since": _wall(self._fallback_wall), "reason": self._fallback_reason,
                "next_websocket_try_at": _wall(self._fallback_wall + self.ws_retry_seconds)}

    def websocket(self) -> WebSocketTransport:
        from .websocket import WebSocketTransport  # on first use, by the I/O thread

        cfg = self._config
        return WebSocketTransport(cfg.ws_url, cfg.token.reveal(), self._key, timeout=cfg.connect_timeout,
                                  tls=self._tls(), heartbeat_default=float(cfg.heartbeat_seconds),
                                  stopping=self._stopping)

    def longpoll(self) -> LongPollTransport:
        from .longpoll import LongPollTransport  # on first use, by the I/O thread

        cfg = self._config
        return LongPollTransport(cfg.brain_url, cfg.token.reveal(), self._key, agent_id=cfg.agent_id,
                                 timeout=cfg.connect_timeout, tls=self._tls(), heartbeat=float(cfg.heartbeat_seconds),
                                 upload_timeout=max(60.0, cfg.resend_after_seconds), stopping=self._stopping)

    def _tls(self) -> TlsSettings:
        cfg = self._config
        return TlsSettings(cfg.tls_verify, str(cfg.ca_bundle) if cfg.ca_bundle else None)

    def _websocket_due(self) -> bool:
        return time.monotonic() - self._fallback_at >= self.ws_retry_seconds

    def _fall_back(self, reason: str) -> None:
        first = not self._warned
        self._warned = True
        self._fallback_reason = reason
        self._fallback_at, self._fallback_wall = time.monotonic(), time.time()
        (log.warning if first else log.info)(
            "transport.fallback_longpoll",
            summary=(f"the WebSocket upgrade was refused on the way to the brain ({reason}); using HTTPS "
                     f"long-poll, trying WebSocket again every {self.ws_retry_seconds:g} s"),
            reason=reason)

    def _open(self, transport: Transport, hold: Callable[[Transport], None]) -> Transport:
        transport.clock = self.clock
        hold(transport)
        transport.open()
        return transport
