"""Control frames, owned here from "produced" to "delivered and removed".

A control frame is a frame produced once that must reach the brain as produced, ahead of the
event backlog: ``command_ack``, ``command_result``, and whatever registered channels emit
(``channels.py``; the schedule channel sends its snapshot frames this way).

* ``emit`` (any thread) writes the frame to the buffer first, so neither a reconnect nor a
  crash loses it, and queues it for the I/O thread.
* ``pump`` (I/O thread) sends what is queued, before any event batch.
* ``settle`` (I/O thread) is told by the transport's receipt that a frame was delivered (or
  refused for its content): only then is its buffer row deleted. On WebSocket a command_ack or
  command_result counts as delivered once written (the brain acks neither) and an
  ``event_batch`` once the brain's ``event_batch_ack`` names it; on long-poll, once the upload
  that carried it was accepted.
* ``adopt`` (I/O thread): the outbox reads the buffer in order for events and hands over every
  other row. A row of a frame this process queued gets its row id attached (so ``settle`` can
  delete it); a row nobody queued (a previous process's, or an adopted orphan buffer's) is
  queued for sending.
* ``reset`` (new session): frames sent but not confirmed go back to the front of the queue.

A producer that must make a frame durable itself (the schedule channel writes a snapshot's
frames in the same transaction that reserves its sequence) passes ``settled=``: no buffer row is
written, ``settled(delivered)`` is called with the receipt (then the producer removes its copy),
and the frame belongs to the session it was emitted in: a new session forgets it without
calling back, and the producer, which still has its copy, decides what to send next.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .logs import get_logger
from .transport import FrameKey, Outgoing

if TYPE_CHECKING:
    from .buffer import BufferRow, BufferStore

log = get_logger(__name__)

#: The transport's ``send``: signs the frame and sends it (I/O thread).
Send = Callable[[Outgoing], None]
# Frames settled before the outbox met their row (it was still in the spool): their row is
# deleted when met. Bounded: a row that never shows up (its append failed) must not pin memory.
MAX_SETTLED_UNSEEN = 4096


def control_row(frame_type: str, frame_id: str, payload: dict[str, Any]) -> str:
    """The buffer row body of a control frame (unsigned: it is signed when sent)."""
    return json.dumps({"type": frame_type, "id": frame_id, "payload": payload},
                      separators=(",", ":"), ensure_ascii=False, default=str)


def parse_control_row(kind: str, body: str) -> tuple[FrameKey, dict[str, Any]]:
    """Key and payload of a stored control row; ValueError when it cannot be read.

    Rows written before the type was stored in the body name it in their kind."""
    try:
        obj = json.loads(body)
        frame_type = obj.get("type", kind)
        frame_id, payload = obj["id"], obj["payload"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError("unreadable control frame") from None
    if not (isinstance(frame_type, str) and isinstance(frame_id, str) and frame_id and isinstance(payload, dict)):
        raise ValueError("unreadable control frame")
    return (frame_type, frame_id), payload


#: ``settled(delivered)``: the receipt of a frame its producer keeps durable itself.
Settled = Callable[[bool], None]


@dataclass(slots=True)
class _Control:
    key: FrameKey
    payload: dict[str, Any]
    events: tuple[str, ...] | None = None
    settled: Settled | None = None
    resend_after: float | None = None
    row_ids: list[int] = field(default_factory=list)
    sent_at: float = 0.0
    sends: int = 0

    @property
    def frame(self) -> Outgoing:
        return Outgoing(self.key[0], self.key[1], self.payload, self.events)


class ControlFrames:
    def __init__(self, buffer: BufferStore, *, resend_after: float = 90.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._buffer = buffer
        self._resend_after = resend_after
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: deque[_Control] = deque()
        self._sent: dict[FrameKey, _Control] = {}
        self._known: dict[FrameKey, _Control] = {}
        self._settled_unseen: OrderedDict[FrameKey, None] = OrderedDict()
        self.delivered = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return f"ControlFrames(queued={len(self._queue)}, awaiting_receipt={len(self._sent)})"

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing waiting for a receipt."""
        return not self._known

    @property
    def pending(self) -> int:
        return len(self._known)

    # -- producers (any thread) --------------------------------------------------------------
    def emit(self, frame_type: str, frame_id: str, payload: dict[str, Any] | None = None, *,
             row_kind: str | None = None, events: Sequence[str] | None = None, settled: Settled | None = None,
             resend_after: float | None = None) -> None:
        """Make a control frame durable, then queue it ahead of the event backlog.

        ``row_kind`` is the buffer row's kind (it decides how eviction counts the row);
        default: the frame type. A frame whose buffer write fails is still sent from memory.
        ``events``: an event_batch's events as canonical JSON texts, sent as they are.
        ``settled``: the producer keeps the frame durable itself (module docstring).
        ``resend_after``: seconds without a receipt before it goes again (default: the runtime's)."""
        key = (str(frame_type), str(frame_id))
        with self._lock:
            if key in self._known:
                return  # produced twice (a duplicate delivery of one command): one frame is enough
            control = _Control(key, dict(payload or {}), None if events is None else tuple(events), settled,
                               resend_after)
            self._known[key] = control
            if settled is not None:
                self._queue.append(control)
                return
        body = control.payload if events is None else {"events": [json.loads(text) for text in events]}
        self._buffer.append(row_kind or key[0], control_row(key[0], key[1], body))
        with self._lock:
            self._queue.append(control)

    # -- the I/O thread ----------------------------------------------------------------------
    def adopt(self, row: BufferRow) -> None:
        """A control row the outbox met in the buffer (see the module docstring)."""
        try:
            key, payload = parse_control_row(row.kind, row.body)
        except ValueError as exc:
            self._drop_rows([row.id], str(exc))
            return
        with self._lock:
            if key in self._settled_unseen:
                del self._settled_unseen[key]
                delete = True
            else:
                delete = False
                control = self._known.get(key)
                if control is None:
                    control = _Control(key, payload)
                    self._known[key] = control
                    self._queue.append(control)
                if row.id not in control.row_ids:
                    control.row_ids.append(row.id)
        if delete:
            self._buffer.delete([row.id])

    def pump(self, send: Send, *, resend: bool = True) -> int:
        """Send every queued control frame; with ``resend``, send again those whose receipt is
        overdue (an ack-awaiting event_batch on WebSocket; long-poll resends by itself).
        Returns how many frames were sent."""
        sent = 0
        while True:
            with self._lock:
                if not self._queue:
                    break
                control = self._queue.popleft()
                control.sent_at = self._clock()
                control.sends += 1
                self._sent[control.key] = control  # before sending: the receipt may come at once
            try:
                send(control.frame)
            except BaseException:
                with self._lock:
                    if self._sent.get(control.key) is control:
                        del self._sent[control.key]
                        self._queue.appendleft(control)
                raise
            sent += 1
        if resend:
            sent += self._resend_overdue(send)
        return sent

    def _resend_overdue(self, send: Send) -> int:
        now = self._clock()
        with self._lock:
            overdue = [c for c in self._sent.values() if now - c.sent_at >= (c.resend_after or self._resend_after)]
        for control in overdue:
            send(control.frame)
            control.sent_at = now
            control.sends += 1
            log.info("controls.resent", frame_type=control.key[0], frame_id=control.key[1], sends=control.sends)
        return len(overdue)

    def settle(self, key: FrameKey, *, delivered: bool = True, reason: str | None = None) -> bool:
        """A transport's receipt for ``key``. False when the frame is not a control frame."""
        with self._lock:
            control = self._sent.pop(key, None)
            if control is None:
                return False
            rows = list(control.row_ids)
            if not rows and control.settled is None:
                self._settled_unseen[key] = None
                while len(self._settled_unseen) > MAX_SETTLED_UNSEEN:
                    self._settled_unseen.popitem(last=False)
        if control.settled is not None:
            self._call_back(control, delivered, reason)
        elif delivered:
            self.delivered += 1
            if rows:
                self._buffer.delete(rows)
        else:
            self._drop_rows(rows, reason or "refused by the brain", count=1)
        with self._lock:  # only now idle: flush() may trust that the row is gone and loss counted
            self._known.pop(key, None)
        return True

    def _call_back(self, control: _Control, delivered: bool, reason: str | None) -> None:
        if delivered:
            self.delivered += 1
        else:
            self._drop_rows([], reason or "refused by the brain", count=1)
        try:
            control.settled(delivered)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - a producer's bug must not end the session
            log.error("controls.settled_callback_failed", frame_type=control.key[0], error_type=type(exc).__name__)

    def reset(self) -> None:
        """New session: what was sent but not confirmed goes out again first, in sending order.
        Frames kept by their producer (``settled=``) belonged to the old session: forgotten."""
        with self._lock:
            unconfirmed = sorted(self._sent.values(), key=lambda c: c.sent_at)
            self._sent.clear()
            kept = [c for c in unconfirmed if c.settled is not None] + [c for c in self._queue if c.settled is not None]
            self._queue = deque(c for c in self._queue if c.settled is None)
            self._queue.extendleft(reversed([c for c in unconfirmed if c.settled is None]))
            for control in kept:
                self._known.pop(control.key, None)
        if kept:
            log.info("controls.session_frames_forgotten", frames=len(kept))

    def _drop_rows(self, ids: list[int], reason: str, count: int | None = None) -> None:
        if ids:
            self._buffer.delete(ids)
        n = len(ids) if count is None else count
        self._buffer.count_loss("content_rejected_frames", n)
        self.rejected += n
        log.warning("controls.rejected", frames=n, reason=reason)
