"""Ships committed schedule projection frames as event_batch frames and keeps them until acked.

Producers (command workers, the observation thread) ``enqueue`` frames right after their
transaction commits; the I/O thread ``pump``s them in commit order, so sequences reach the brain
in order and every frame of one snapshot before the next. The brain acks a batch only once it
accepted it (a gap or an incomplete snapshot withholds the ack), so an unacked batch is re-sent
after ``resend_after``. A session's end forgets what was in flight: the brain fences the epoch,
and the next activation replaces those frames.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..logs import get_logger
from ..protocol.schedules import FRAME_TARGET_BYTES
from .store import PendingFrame, ScheduleStore

log = get_logger(__name__)

ENVELOPE_OVERHEAD = 512
RESEND_AFTER_SECONDS = 20.0

Send = Callable[[bytes], None]


@dataclass(slots=True)
class _Batch:
    frame_id: str
    frames: list[PendingFrame]
    sent_at: float


class ScheduleOutbox:
    def __init__(self, store: ScheduleStore, *, resend_after: float = RESEND_AFTER_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._resend_after = resend_after
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: list[PendingFrame] = []
        self._inflight: dict[str, _Batch] = {}
        self._sent: set[int] = set()
        self._acked: set[int] = set()
        self._session = 0
        self.max_frame = FRAME_TARGET_BYTES + ENVELOPE_OVERHEAD
        self.frames_sent = 0
        self.resends = 0

    # -- producers ------------------------------------------------------------------------------

    def enqueue(self, frames: Iterable[PendingFrame]) -> None:
        with self._cond:
            self._queue.extend(frames)

    def drop_owner(self, owner: str) -> None:
        """Forget queued and in-flight frames of an owner (its epoch ended)."""
        with self._cond:
            self._queue = [f for f in self._queue if f.owner != owner]
            for fid in [fid for fid, b in self._inflight.items() if b.frames[0].owner == owner]:
                del self._inflight[fid]
            self._cond.notify_all()

    def wait_sent(self, ids: Iterable[int], timeout: float) -> bool:
        """Block until every frame id was written to the socket in this session (or acked)."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        with self._cond:
            session = self._session
            while not wanted <= (self._sent | self._acked):
                left = deadline - time.monotonic()
                if left <= 0 or session != self._session:
                    return False
                self._cond.wait(min(left, 0.25))
        return True

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._queue and not self._inflight

    # -- the I/O thread -------------------------------------------------------------------------

    def session_opened(self, max_frame: int) -> None:
        with self._cond:
            self.max_frame = max_frame
            self._session += 1
            self._queue.clear()
            self._inflight.clear()
            self._sent.clear()
            self._acked.clear()
            self._cond.notify_all()

    def session_closed(self) -> None:
        self.session_opened(self.max_frame)

    def pump(self, sign: Callable[[str, list[str]], bytes], send: Send) -> int:
        """Send every queued frame, packed into as few event_batch frames as fit; returns frames sent."""
        with self._cond:
            if not self._queue:
                return 0
            queue, self._queue = self._queue, []
        budget = min(FRAME_TARGET_BYTES, self.max_frame - ENVELOPE_OVERHEAD)
        sent = 0
        batch: list[PendingFrame] = []
        size = 0
        for frame in queue:
            n = len(frame.body.encode("utf-8")) + 1
            if batch and (size + n > budget or frame.owner != batch[0].owner):
                sent += self._ship(batch, sign, send)
                batch, size = [], 0
            batch.append(frame)
            size += n
        if batch:
            sent += self._ship(batch, sign, send)
        return sent

    def _ship(self, frames: list[PendingFrame], sign: Callable[[str, list[str]], bytes], send: Send) -> int:
        batch = _Batch("ev_" + secrets.token_hex(16), frames, self._clock())
        with self._cond:
            self._inflight[batch.frame_id] = batch
        send(sign(batch.frame_id, [f.body for f in frames]))
        with self._cond:
            self._sent.update(f.id for f in frames)
            self._cond.notify_all()
        self.frames_sent += 1
        return len(frames)

    def on_ack(self, acked_id: str) -> bool:
        with self._cond:
            batch = self._inflight.pop(acked_id, None)
            if batch is None:
                return False
            ids = [f.id for f in batch.frames]
            self._acked.update(ids)
            self._cond.notify_all()
        self._store.delete_frames(ids)
        return True

    def resend_due(self, sign: Callable[[str, list[str]], bytes], send: Send) -> int:
        """Re-send every unacked batch, in order, once the oldest waited ``resend_after``."""
        with self._cond:
            if not self._inflight:
                return 0
            head = next(iter(self._inflight.values()))
            now = self._clock()
            if now - head.sent_at < self._resend_after:
                return 0
            batches = list(self._inflight.values())
            for b in batches:
                b.sent_at = now
        for b in batches:
            send(sign(b.frame_id, [f.body for f in b.frames]))
        self.resends += len(batches)
        log.info("schedules.resent", batches=len(batches), frames=sum(len(b.frames) for b in batches))
        return len(batches)
