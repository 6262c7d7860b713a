"""Turns buffered event rows into signed event batches and keeps them until the brain acks them.

Owned by the runtime's I/O thread (no locking). Event rows leave the buffer only on an
``event_batch_ack`` (or, on long-poll, an accepted upload). Every other row it meets belongs to
the control frames (``controls.ControlFrames.adopt``). On a new session everything unconfirmed
is read again and re-signed; events keep their id and occurred_at because their text is never
rebuilt.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .logs import get_logger
from .protocol import DEFAULT_MAX_FRAME_BYTES, MAX_EVENTS_PER_BATCH, FrameType
from .transport import Outgoing

if TYPE_CHECKING:
    from .buffer import BufferRow, BufferStore

log = get_logger(__name__)

# Bytes an event_batch envelope adds around its events (ids, ts, nonce, seq, hmac, keys).
ENVELOPE_OVERHEAD = 320
# Frames are sized so the brain needs about this long to ingest one: big enough to amortise its
# per-frame cost, small enough that events show up promptly and a lost frame costs little.
TARGET_FRAME_SECONDS = 10.0
MIN_BATCH_EVENTS = 100
INITIAL_BATCH_EVENTS = 1000
# A partial batch waits until this long after the previous send (an event after a quiet spell
# goes at once): under a steady stream the I/O thread wakes at most ~20 times a second instead
# of per event, and competes far less with the host's threads for the GIL and the buffer.
LINGER_SECONDS = 0.05
EVENT_KIND = "event"

#: The transport's ``send``: signs the frame and sends it (or queues it for upload).
Send = Callable[[Outgoing], None]


@dataclass(slots=True)
class InflightBatch:
    frame_id: str
    row_ids: list[int]
    texts: list[str]
    sent_at: float
    resends: int = 0


@dataclass(slots=True)
class OutboxStats:
    frames_sent: int = 0
    events_sent: int = 0
    events_acked: int = 0
    resends: int = 0
    content_rejected: int = 0
    last_ack_at: float | None = None
    last_flush_wall: float | None = None
    ack_latencies: list[float] = field(default_factory=list)


class Outbox:
    def __init__(
        self,
        buffer: BufferStore,
        *,
        max_batch_events: int = MAX_EVENTS_PER_BATCH,
        max_inflight: int = 4,
        resend_after: float = 90.0,
        clock: Callable[[], float] = time.monotonic,
        on_control_row: Callable[[BufferRow], None] | None = None,
    ) -> None:
        self._buffer = buffer
        self._on_control_row = on_control_row or self._unclaimed_control
        self._max_events = max(1, min(max_batch_events, MAX_EVENTS_PER_BATCH))
        self._max_inflight = max(1, max_inflight)
        self._resend_after = resend_after
        self._clock = clock
        self._max_frame = DEFAULT_MAX_FRAME_BYTES
        self._target_frame = DEFAULT_MAX_FRAME_BYTES
        self._cursor = 0
        self._inflight: dict[str, InflightBatch] = {}
        self._head_since = 0.0
        self.stats = OutboxStats()
        self._ack_rate: float | None = None  # events/s the brain confirms, smoothed
        self._last_send = float("-inf")  # no send yet: nothing to linger after
        self._backlog = False  # the last read filled its limit: more may be waiting
        self._row_bytes = 64  # mean event size of the last frame (a low first guess reads enough)
        self.batch_target = min(INITIAL_BATCH_EVENTS, self._max_events)

    # -- session lifecycle -------------------------------------------------------------------
    def reset(self, max_frame_bytes: int | None) -> None:
        """New session: forget what was in flight; unconfirmed rows will be read and sent again."""
        self._max_frame = self._target_frame = max_frame_bytes or DEFAULT_MAX_FRAME_BYTES
        self._cursor = 0
        self._inflight.clear()

    @property
    def target_frame(self) -> int:
        return self._target_frame

    @target_frame.setter
    def target_frame(self, size: int) -> None:
        """The frame size to build now, at most the brain's frame limit: long-poll learns the
        brain's upload limit as it goes. An event over it but within the limit goes alone."""
        self._target_frame = max(ENVELOPE_OVERHEAD + 64, min(int(size), self._max_frame))

    def on_too_large(self, frame_id: str) -> None:
        """The transport could not carry this batch at its size (a long-poll upload limit; the
        transport has lowered ``target_frame`` already). A batch of one event: the event is
        more than the brain takes, and is dropped and counted. Otherwise every unconfirmed row
        is read again at the smaller size (a row delivered meanwhile arrives twice at most, and
        the brain drops the second copy by event id)."""
        batch = self._inflight.get(frame_id)
        if batch is None:
            return
        if len(batch.row_ids) == 1:
            self.on_rejected(frame_id, "event larger than the brain accepts in one upload")
            return
        log.info("outbox.frame_too_large", frame_id=frame_id, events=len(batch.row_ids), target=self._target_frame)
        self._cursor = 0
        self._inflight.clear()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def idle(self) -> bool:
        return not self._inflight

    def expected_ack_seconds(self) -> float | None:
        """How long the brain should take over the oldest unacked batch, at the ack rate it has
        shown (None before any ack): the session's liveness limit never undercuts it."""
        if not self._inflight or not self._ack_rate:
            return None
        head = next(iter(self._inflight.values()))
        return len(head.row_ids) / self._ack_rate

    # -- sending -----------------------------------------------------------------------------
    def pump(self, send: Send, *, linger: bool = True) -> int:
        """Send frames while the window has room; returns the number of rows handled.

        With ``linger``, a partial batch is held back until LINGER_SECONDS after the last send.
        The final drain passes ``linger=False``.
        """
        handled = 0
        if linger and not self._backlog and self._clock() - self._last_send < LINGER_SECONDS:
            # The last read found less than a frame: let the next one fill without looking (a
            # look means an ingest pass, and under a steady stream the I/O thread would then
            # compete with the host's threads for the GIL on every ack instead of ~20 times a second).
            return 0
        while len(self._inflight) < self._max_inflight:
            limit = self._read_limit()
            rows = self._buffer.read(after_id=self._cursor, limit=limit)
            self._backlog = len(rows) >= limit
            if not rows:
                break
            if linger and not self._backlog and self._clock() - self._last_send < LINGER_SECONDS:
                break  # a partial frame: let it fill a little
            handled += self._ship(rows, send)
        return handled

    def _read_limit(self) -> int:
        # Rows past the frame's byte budget would be read only to be read again for the next frame.
        fits = (self._target_frame - ENVELOPE_OVERHEAD) // max(self._row_bytes, 1)
        return max(1, min(self.batch_target, fits + fits // 16))

    def _ship(self, rows: list, send: Send) -> int:
        limit = self._max_frame - ENVELOPE_OVERHEAD
        budget = self._target_frame - ENVELOPE_OVERHEAD
        ids: list[int] = []
        texts: list[str] = []
        size = 0
        rejected: list[int] = []
        for row in rows:
            if row.kind != EVENT_KIND:
                self._on_control_row(row)
                self._cursor = row.id
                continue
            body = row.body
            n = (len(body) if body.isascii() else len(body.encode("utf-8"))) + 1
            if n > limit:
                rejected.append(row.id)
                self._cursor = row.id
                continue
            if texts and (size + n > budget or len(texts) >= self.batch_target):
                break
            ids.append(row.id)
            texts.append(row.body)
            size += n
            self._cursor = row.id
        if rejected:
            self._reject(rejected, "event larger than the brain's max frame size")
        if texts:
            batch = InflightBatch("ev_" + secrets.token_hex(16), ids, texts, self._clock())
            if not self._inflight:
                self._head_since = batch.sent_at
            self._inflight[batch.frame_id] = batch
            send(Outgoing(FrameType.EVENT_BATCH.value, batch.frame_id, events=texts))
            self._row_bytes = size // len(texts)
            self._last_send = batch.sent_at
            self.stats.frames_sent += 1
            self.stats.events_sent += len(texts)
        return len(ids) + len(rejected)

    def _unclaimed_control(self, row: BufferRow) -> None:
        self._reject([row.id], f"{row.kind} row with no control channel to send it")

    def _reject(self, ids: list[int], reason: str) -> None:
        self._buffer.delete(ids)
        self._buffer.count_loss("content_rejected_frames", len(ids))
        self.stats.content_rejected += len(ids)
        log.warning("outbox.rejected", rows=len(ids), reason=reason)

    # -- acks and resends --------------------------------------------------------------------
    def on_ack(self, acked_id: str) -> int:
        was_head = bool(self._inflight) and next(iter(self._inflight)) == acked_id
        batch = self._inflight.pop(acked_id, None)
        if batch is None:
            return 0
        now = self._clock()
        self._buffer.delete(batch.row_ids)
        self._learn_rate(len(batch.row_ids), now - max(self._head_since, batch.sent_at))
        if was_head:
            # Only a new head starts a new wait: a batch whose ack the brain withheld must not be
            # kept waiting forever by acks for the batches sent after it.
            self._head_since = now
        self.stats.events_acked += len(batch.row_ids)
        self.stats.last_ack_at = now
        self.stats.last_flush_wall = time.time()
        return len(batch.row_ids)

    def owns(self, frame_id: str) -> bool:
        return frame_id in self._inflight

    def on_rejected(self, frame_id: str, reason: str) -> int:
        """The brain refused the batch for its content (long-poll 413/415/422 down to this one
        frame): its events are dropped and counted as content-rejected loss."""
        was_head = bool(self._inflight) and next(iter(self._inflight)) == frame_id
        batch = self._inflight.pop(frame_id, None)
        if batch is None:
            return 0
        if was_head:
            self._head_since = self._clock()
        self._reject(batch.row_ids, reason)
        return len(batch.row_ids)

    def _learn_rate(self, events: int, service_seconds: float) -> None:
        """Adapt the batch size to how fast this brain acks (a local brain: thousands of events a
        second; the real brain with SQLite: about a hundred)."""
        sample = events / max(service_seconds, 0.001)
        self._ack_rate = sample if self._ack_rate is None else 0.7 * self._ack_rate + 0.3 * sample
        self.batch_target = int(min(self._max_events, max(MIN_BATCH_EVENTS, self._ack_rate * TARGET_FRAME_SECONDS)))

    def resend_due(self, send: Send) -> int:
        """Re-sign and resend the oldest unacked batch once it waited ``resend_after`` at the head.

        The clock starts when a batch becomes the head of the line (sent with an empty window, or
        its predecessor acked), so a slow but live brain with a queue is not flooded with copies.
        """
        if not self._inflight:
            return 0
        now = self._clock()
        if now - self._head_since < self._resend_after:
            return 0
        head = next(iter(self._inflight.values()))
        head.resends += 1
        head.sent_at = now
        self._head_since = now
        self._buffer.mark_attempt(head.row_ids)
        send(Outgoing(FrameType.EVENT_BATCH.value, head.frame_id, events=head.texts))
        self.stats.resends += 1
        log.info("outbox.resent", frame_id=head.frame_id, events=len(head.texts), resends=head.resends)
        return len(head.texts)
