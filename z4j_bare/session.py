"""One established session over one transport: the work of RUNNING and DRAINING.

``Session.run`` is the loop of RUNNING: control frames first, heartbeats, event batches, then
whatever the transport has: verified frames from the brain (dispatched) and receipts for frames
sent (settled with their owner: the outbox for event batches, ControlFrames for the rest). It
returns the request that ended it ("stop", "reconnect") and raises for anything else.
``Session.drain`` is DRAINING: deliver what is buffered until the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .backoff import SessionEnded
from .channels import offer
from .logs import get_logger
from .protocol import BackoffClass, Frame, FrameType, ProtocolError, classify_error_frame
from .safety import safe_call
from .transport import Outgoing, Receipt, SessionInfo, Transport
from .transport.liveness import Liveness

if TYPE_CHECKING:
    from .buffer import BufferStore
    from .channels import FrameHandler
    from .commands import CommandChannel
    from .config import Config
    from .controls import ControlFrames
    from .outbox import Outbox


class SessionHost(Protocol):
    """What a session uses of the runtime that runs it (``AgentRuntime`` is one)."""

    config: Config
    buffer: BufferStore
    outbox: Outbox
    controls: ControlFrames
    commands: CommandChannel

    @property
    def handlers(self) -> tuple[FrameHandler, ...]: ...

    def status_frames(self, session: Session) -> list[Outgoing]: ...

# The runtime's records keep the one logger name operators filter on, whichever module logs them.
log = get_logger("z4j_bare.runtime")

IDLE_POLL_SECONDS = 0.05
# A sibling agent of this deployment that died leaves its buffer file; look for such orphans.
ADOPT_EVERY_SECONDS = 60.0


class Session:
    def __init__(self, runtime: SessionHost, transport: Transport, info: SessionInfo) -> None:
        self._rt = runtime
        self.transport = transport
        self.info = info
        self.since = time.monotonic()
        # Long-poll sends again by itself until the brain accepts; a second copy would only be waste.
        self._resend = not transport.retries_sends
        #: Whether the brain still answers (a frozen brain closes nothing: see transport/liveness.py).
        self.liveness = Liveness(runtime.config.silence_timeout_seconds, quiet_seconds=transport.quiet_seconds,
                                 expected=runtime.outbox.expected_ack_seconds)

    def __repr__(self) -> str:
        return f"Session(transport={self.transport.name!r}, session_id={self.info.session_id!r})"

    def run(self, next_request: Callable[[], str | None]) -> str:
        """RUNNING: until a request ("stop", "reconnect") ends the session; it is returned."""
        now = time.monotonic()
        next_beat, next_adopt = now, now + ADOPT_EVERY_SECONDS
        while True:
            request = next_request()
            if request is not None:
                return request
            now = time.monotonic()
            self._send_controls()
            if now >= next_beat:
                for frame in self._rt.status_frames(self):
                    self.transport.send(frame)
                next_beat = now + self.info.heartbeat_interval
            if self.liveness.ping_due(now) and self.transport.keepalive():
                self.liveness.sent("a ping", now)
            if now >= next_adopt:
                safe_call(self._rt.buffer.adopt_orphans, site="runtime.adopt_orphans")
                next_adopt = now + ADOPT_EVERY_SECONDS
            self._rt.outbox.target_frame = self.transport.frame_limit
            moved = self._rt.outbox.pump(self._send_batch)
            if self._resend:
                self._rt.outbox.resend_due(self._send_batch)
            self._receive(0.0 if moved else IDLE_POLL_SECONDS)
            self._check_liveness()

    def drain(self, deadline: float) -> bool:
        """DRAINING: deliver what is buffered while the deadline allows; True when all of it went.
        Whatever is left stays on disk for the next process."""
        rt = self._rt
        while time.monotonic() < deadline:
            self._send_controls()
            rt.outbox.target_frame = self.transport.frame_limit
            moved = rt.outbox.pump(self.transport.send, linger=False)
            if not moved and rt.outbox.idle and rt.controls.idle and rt.buffer.depth_after_ingest() == 0:
                return True
            self._receive(min(IDLE_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        return False

    def _send_batch(self, frame: Outgoing) -> None:
        """Send an event batch: the brain owes an ack for it."""
        self.transport.send(frame)
        self.liveness.sent("an event batch")

    def _check_liveness(self) -> None:
        """After reading whatever has arrived: end the session if the brain has gone silent."""
        self.liveness.heard(self.transport.last_heard)
        reason = self.liveness.verdict()
        if reason is not None:
            # A brain that answers nothing will not answer a close handshake either.
            self.transport.abort()
            raise SessionEnded(BackoffClass.CONNECTION, reason)

    def _send_controls(self) -> None:
        self._rt.controls.pump(self.transport.send, resend=self._resend)

    def _receive(self, timeout: float) -> None:
        item = self._next(timeout)
        while item is not None:
            if isinstance(item, Receipt):
                self._settle(item)
            else:
                self._dispatch(item)
            item = self._next(0.0)

    def _next(self, timeout: float) -> Frame | Receipt | None:
        try:
            return self.transport.receive(timeout)
        except ProtocolError as exc:
            # Never act on a frame that failed verification; end the session (fresh seq/nonce windows).
            log.warning("runtime.inbound_rejected", error_type=type(exc).__name__, reason=str(exc))
            raise SessionEnded(BackoffClass.CONNECTION, f"inbound frame rejected: {exc}") from None

    def _settle(self, receipt: Receipt) -> None:
        frame_type, frame_id = receipt.key
        outbox = self._rt.outbox
        if frame_type == FrameType.EVENT_BATCH.value and outbox.owns(frame_id):
            if receipt.delivered:
                outbox.on_ack(frame_id)
            elif receipt.too_large:
                outbox.on_too_large(frame_id)
            else:
                outbox.on_rejected(frame_id, receipt.reason or "refused by the brain")
            return
        if self._rt.controls.settle(receipt.key, delivered=receipt.delivered, reason=receipt.reason):
            return
        # Heartbeats and agent_status have no owner: nothing to settle.

    def _dispatch(self, frame: Frame) -> None:
        match frame.type:
            case FrameType.ERROR:
                code = str(frame.payload.get("code", ""))
                fatal = frame.payload.get("fatal") is True
                cls = classify_error_frame(code, fatal)
                log.warning("runtime.error_frame", code=code, fatal=fatal,
                            message=str(frame.payload.get("message", ""))[:200])
                if cls is not None:
                    raise SessionEnded(cls, f"fatal error frame from brain: {code}")
            case _ if offer(self._rt.handlers, frame):
                pass
            case FrameType.COMMAND:
                self._rt.commands.submit(frame)
            case _:
                log.debug("runtime.inbound_ignored", type=frame.type.value)
