"""How committed schedule projection frames leave: as event_batch frames on the runtime's control path.

The store already holds every frame durably (written in the transaction that reserved its
sequence), so the frames are handed to ``controls.ControlFrames`` with ``settled=``: no second
copy in the buffer, and the store's rows are deleted only once the brain acked the batch (the
brain acks only what it accepted: a gap or an incomplete snapshot withholds the ack, so an
unacked batch goes again after ``RESEND_AFTER_SECONDS``). One FIFO carries these frames and
the command results, so a result is never sent before the snapshot or projection it names.
A session's end forgets what was in flight: the brain fences the epoch, and the next
activation replaces those frames.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable

from ..logs import get_logger
from ..protocol import FrameType
from ..protocol.schedules import FRAME_TARGET_BYTES
from .store import PendingFrame, ScheduleStore

log = get_logger(__name__)

ENVELOPE_OVERHEAD = 512
# Sooner than the event outbox's default: while the brain has not accepted a sequence, a control
# planned from its accepted sequence cannot be honoured (schedules.md 9 item 3).
RESEND_AFTER_SECONDS = 20.0

#: The runtime's ``emit`` (channels.py).
Emit = Callable[..., None]


class Outbound:
    def __init__(self, store: ScheduleStore) -> None:
        self._store = store
        self.emit: Emit | None = None
        self.max_frame = FRAME_TARGET_BYTES + ENVELOPE_OVERHEAD
        self.batches_sent = 0
        self.batches_refused = 0

    def __repr__(self) -> str:
        return f"Outbound(max_frame={self.max_frame}, batches_sent={self.batches_sent})"

    @property
    def budget(self) -> int:
        """Bytes of event texts one event_batch may carry in this session."""
        return min(FRAME_TARGET_BYTES, self.max_frame - ENVELOPE_OVERHEAD)

    def send(self, frames: Iterable[PendingFrame]) -> None:
        """Hand committed frames over, packed into as few event_batch frames as fit, in order."""
        emit = self.emit
        if emit is None:  # not registered with a runtime: the frames wait in the store
            return
        for batch in pack(list(frames), self.budget):
            ids = [f.id for f in batch]
            emit(FrameType.EVENT_BATCH.value, "ev_" + secrets.token_hex(16), events=[f.body for f in batch],
                 settled=lambda delivered, ids=ids: self._settled(ids, delivered),
                 resend_after=RESEND_AFTER_SECONDS)
            self.batches_sent += 1

    def _settled(self, ids: list[int], delivered: bool) -> None:
        if delivered:
            self._store.delete_frames(ids)
            return
        # Refused for its size alone: nothing smaller can carry the same sequence. The frames stay
        # in the store (the next activation drops them); the brain sees a gap until then.
        self.batches_refused += 1
        log.error("schedules.frames_refused", frames=len(ids))


def pack(frames: list[PendingFrame], budget: int) -> list[list[PendingFrame]]:
    """Consecutive frames grouped into batches of at most ``budget`` bytes (one owner per batch)."""
    batches: list[list[PendingFrame]] = []
    size = 0
    for frame in frames:
        n = len(frame.body.encode("utf-8")) + 1
        if batches and batches[-1] and (size + n <= budget and frame.owner == batches[-1][0].owner):
            batches[-1].append(frame)
            size += n
        else:
            batches.append([frame])
            size = n
    return batches
