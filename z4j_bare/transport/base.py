"""The transport interface: what the runtime needs from a wire, whichever it is.

A transport is owned by the runtime's I/O thread for one session:

    transport.open()                              # connect (TransportError says why not)
    info = transport.handshake(hello, timeout)    # hello/hello_ack, or the long-poll probe
    transport.send(Outgoing(...))                 # signed with this session's signer
    item = transport.receive(timeout)             # a verified Frame, a Receipt, or None
    transport.close()                             # clean end; abort() from any thread

Signing and verification happen here, in one place for every transport (``_bind``,
``_sign``, ``_verify``): a frame from the brain is verified (HMAC, then the replay guard)
before anything reads it, whichever wire it came over. A ``Receipt`` tells the owner of a sent
frame that the brain has it (or refused it for its content), in the transport's own terms: an
``event_batch_ack`` on WebSocket, an accepted upload on long-poll, a completed write for frames
the WebSocket brain never acks.
"""

from __future__ import annotations

import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    BackoffClass,
    Frame,
    FrameType,
    SessionBinding,
    Signer,
    Verifier,
)
from .clock import BrainClock

#: (frame type, frame id): command_ack and command_result share the command's id.
FrameKey = tuple[str, str]


class TransportError(Exception):
    """The connection failed or ended. ``backoff`` says how long to wait before the next try.

    ``upgrade_refused``: something answered the WebSocket upgrade with a plain HTTP status that
    is not an authentication failure (a proxy that does not pass upgrades): ``auto`` may switch
    to long-poll."""

    def __init__(self, message: str, backoff: BackoffClass = BackoffClass.CONNECTION, close_code: int | None = None,
                 *, upgrade_refused: bool = False, timed_out: bool = False) -> None:
        super().__init__(message)
        self.backoff = backoff
        self.close_code = close_code
        self.upgrade_refused = upgrade_refused
        #: The attempt waited its whole timeout for an answer (see backoff.SessionEnded.paced).
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class TlsSettings:
    verify: bool = True
    ca_bundle: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_bundle)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a handshake established. ``clock_offset`` is the brain's clock minus ours in
    seconds, as far as the handshake could tell (None: unknown), ``clock_source`` what told it
    (``hello_ack`` or ``date``)."""

    transport: str
    binding: SessionBinding
    heartbeat_interval: float
    max_frame: int = DEFAULT_MAX_FRAME_BYTES
    brain_version: str | None = None
    clock_offset: float | None = None
    clock_source: str | None = None

    @property
    def session_id(self) -> str:
        return self.binding.session_id

    def as_dict(self) -> dict[str, Any]:
        return {"transport": self.transport, "session_id": self.binding.session_id, "agent_id": self.binding.agent_id,
                "project_id": self.binding.project_id, "heartbeat_interval": self.heartbeat_interval,
                "max_frame": self.max_frame, "brain_version": self.brain_version, "clock_offset": self.clock_offset,
                "clock_source": self.clock_source}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A frame to send, unsigned: the transport signs it (again, if it has to send it again)."""

    type: str
    id: str
    payload: Mapping[str, Any] | None = None
    events: Sequence[str] | None = None  # event_batch: the events' canonical JSON texts

    @property
    def key(self) -> FrameKey:
        return (self.type, self.id)

    def sign(self, signer: Signer) -> bytes:
        if self.events is not None:
            return signer.sign_event_batch(self.id, self.events)
        return signer.sign(self.type, self.id, dict(self.payload or {}))


@dataclass(frozen=True, slots=True)
class Receipt:
    """The brain has the frame ``key`` (``delivered``), or refused it: for its content, or, with
    ``too_large``, for its size alone (a smaller frame with the same content may pass)."""

    key: FrameKey
    delivered: bool = True
    reason: str | None = None
    too_large: bool = False


class Transport(ABC):
    #: ``ws`` or ``longpoll``: shown in health(), the trace and doctor.
    name: ClassVar[str]
    #: True when the transport itself sends a frame again until the brain confirms it
    #: (long-poll): the outbox must then not resend on its own.
    retries_sends: ClassVar[bool] = False

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._signer: Signer | None = None
        self._verifier: Verifier | None = None
        self._max_frame = DEFAULT_MAX_FRAME_BYTES
        self._receipts: deque[Receipt] = deque()
        self._receipts_lock = threading.Lock()
        #: The brain's clock (shared by a runtime's transports): signatures and replay checks use it.
        self.clock = BrainClock()
        #: Monotonic time anything last came from the brain (frames, acks, pongs, HTTP answers).
        self.last_heard = time.monotonic()
        #: How long a live brain may stay silent by design while the agent waits on it (long-poll
        #: holds a poll open): added to the session's liveness limit.
        self.quiet_seconds = 0.0

    @abstractmethod
    def open(self) -> None:
        """Connect; raises TransportError (with its backoff class) when it cannot."""

    @abstractmethod
    def handshake(self, hello: Mapping[str, Any], timeout: float) -> SessionInfo:
        """Establish the session (binds the signer and verifier); raises TransportError or
        ProtocolError (or TimeoutError) when the brain does not accept it."""

    @abstractmethod
    def send(self, frame: Outgoing) -> None:
        """Sign with the session's signer and send, or queue for sending; raises TransportError."""

    @abstractmethod
    def receive(self, timeout: float) -> Frame | Receipt | None:
        """The next verified frame from the brain or receipt for a sent frame, waiting up to
        ``timeout`` seconds; raises TransportError when the session is over and ProtocolError
        for a frame that failed verification (nothing may act on it)."""

    @abstractmethod
    def close(self, code: int = 1000) -> None:
        """End the session cleanly (never raises)."""

    @abstractmethod
    def abort(self) -> None:
        """From any thread: make blocked I/O return at once (stop() against a silent brain)."""

    def keepalive(self) -> bool:
        """Called every few seconds by the session (``liveness.Liveness.ping_every``); True when
        it sent something the brain must answer (WebSocket: a ping, answered by a pong)."""
        return False

    @property
    def frame_limit(self) -> int:
        """The largest signed frame worth building now (the brain's limit as far as known)."""
        return self._max_frame

    # -- shared by every transport -----------------------------------------------------------
    def _bind(self, info: SessionInfo) -> SessionInfo:
        if info.clock_offset is not None:
            self.clock.measured(info.clock_offset, info.clock_source or "date")
        self._signer = Signer(self._key, info.binding, self.clock.now_text)
        self._verifier = Verifier(self._key, info.binding, self.clock.now)
        self._max_frame = info.max_frame
        return info

    def _sign(self, frame: Outgoing) -> bytes | None:
        """The signed bytes, or None (and a refusal receipt) when the frame exceeds the brain's
        frame size: sending it would only make the brain end the session."""
        data = self._sign_within_limit(frame)
        if data is None:
            self._add_receipt(Receipt(frame.key, False, f"signed frame over the brain's {self._max_frame}-byte "
                                                           "frame limit"))
        return data

    def _sign_within_limit(self, frame: Outgoing) -> bytes | None:
        if self._signer is None:
            raise TransportError("send before the handshake")
        data = frame.sign(self._signer)
        return data if len(data) <= self._max_frame else None

    def _verify(self, data: bytes | str) -> Frame:
        if self._verifier is None:
            raise TransportError("receive before the handshake")
        return self._verifier.verify(data)

    def _add_receipt(self, receipt: Receipt) -> None:
        with self._receipts_lock:
            self._receipts.append(receipt)

    def _next_receipt(self) -> Receipt | None:
        with self._receipts_lock:
            return self._receipts.popleft() if self._receipts else None

    @staticmethod
    def _ack_receipt(frame: Frame) -> Receipt | None:
        """The receipt an ``event_batch_ack`` stands for (None when it names nothing)."""
        acked = frame.payload.get("acked_id")
        if frame.type is FrameType.EVENT_BATCH_ACK and isinstance(acked, str) and acked:
            return Receipt((FrameType.EVENT_BATCH.value, acked))
        return None
