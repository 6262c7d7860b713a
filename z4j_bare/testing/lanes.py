"""Event batches from verified frames to storage and acks (brain loop + the storage thread).

``BatchIngest.store`` is the one way a batch is stored: the SQLite work runs on the storage
thread, listeners get the per-event summaries, and batch hooks may withhold the ack. A
WebSocket session feeds it through its ``IngestLane``: a bounded queue so the receive loop
keeps verifying the next frame while storage works on the previous one, and a worker that
sends ``event_batch_ack`` (or not, per the fault knobs).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from ..logs import get_logger
from ..protocol import CloseCode, Frame, FrameType
from .changes import Changes
from .dispatch import FrameRejected
from .framelog import Listeners
from .session import Session
from .store import BrainStore

if TYPE_CHECKING:
    from .faults import BrainFaults
    from .server import BrainServer

log = get_logger(__name__)

INGEST_QUEUE_FRAMES = 64
# Events parsed but not yet stored, per session, before the receive loop waits for the storage
# thread: the parsed frames are objects the garbage collector tracks, and letting 64 frames of
# 4000 events pile up made each full collection walk a million of them. Two big frames still
# overlap (one stored while the next is verified); a lone frame of any size is always taken.
INGEST_QUEUE_EVENTS = 8192
_STOP = object()

# hook(session, frame, events) -> False to withhold the ack; runs on the loop after storing.
BatchHook = Callable[[Session, Frame, list], "Awaitable[bool | None] | bool | None"]


@dataclass(frozen=True)
class BatchResult:
    """What storing one batch gave: the counts an ack carries, and whether to ack at all."""

    received: int
    accepted: int
    ack: bool = True

    @property
    def rejected(self) -> int:
        return self.received - self.accepted


class BatchIngest:
    """Stores verified event batches; shared by every session and transport."""

    def __init__(self, store: BrainStore, server: BrainServer, changes: Changes, listeners: Listeners,
                 faults: BrainFaults) -> None:
        self._store = store
        self._server = server
        self._changes = changes
        self._listeners = listeners
        self._faults = faults
        self._hooks: list[BatchHook] = []

    def add_hook(self, hook: BatchHook) -> None:
        """``hook(session, frame, events)`` after each stored batch; returning False withholds its ack."""
        self._hooks.append(hook)

    async def store(self, session: Session, frame: Frame, events_text: bytes | None) -> BatchResult | None:
        """Store one verified event_batch; None if storage failed (no ack: the agent resends)."""
        agent = session.agent
        events = frame.payload["events"]
        try:
            accepted, summaries = await self._server.run_blocking(
                self._ingest, events, events_text, frame_id=frame.id, project_id=agent.project_uuid,
                agent_id=agent.agent_id, summaries=bool(self._listeners),
            )
        except Exception:
            # Like the real brain on a transient DB failure: no ack, the agent resends.
            log.exception("brain.ingest_failed", agent_id=agent.agent_id, frame_id=frame.id)
            return None
        self._changes.bump()
        if self._listeners:
            now = time.time()
            for s in summaries:
                self._listeners.emit({"at": now, "direction": "in", "type": "event", "agent_id": agent.agent_id,
                                      "agent": agent.name, **s})
        ack = True
        for hook in list(self._hooks):
            verdict = hook(session, frame, events)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            ack = ack and verdict is not False
        return BatchResult(received=len(events), accepted=accepted, ack=ack)

    def _ingest(self, events: list[Any], events_text: bytes | None, **kwargs: Any) -> tuple[int, list[dict[str, Any]]]:
        if events_text is None:  # not the fast layout: any faithful JSON text of the events will do
            events_text = json.dumps(events, ensure_ascii=False).encode("utf-8")
        return self._store.ingest(events, events_text, **kwargs)

    def open_lane(self, session: Session) -> IngestLane:
        lane = IngestLane(self, session, self._server, self._faults)
        session.ingest_lane = lane
        return lane

    async def on_event_batch(self, session: Session, frame: Frame, events_text: bytes | None) -> None:
        """The frame table's handler for event_batch: queue it on the session's lane."""
        if not isinstance(frame.payload.get("events"), list):
            raise FrameRejected(CloseCode.BAD_FRAME, "event_batch.events must be a list")
        lane = session.ingest_lane
        if lane is None:
            raise RuntimeError(f"{session!r} has no ingest lane: call BatchIngest.open_lane(session) first")
        await lane.submit(frame, events_text)


class IngestLane:
    """One session's queue to storage and its ack sender (brain loop only)."""

    def __init__(self, ingest: BatchIngest, session: Session, server: BrainServer, faults: BrainFaults) -> None:
        self._ingest = ingest
        self._session = session
        self._server = server
        self._faults = faults
        self._queue: asyncio.Queue[Any] = asyncio.Queue(INGEST_QUEUE_FRAMES)
        self._backlog = _IngestBacklog()
        server.spawn(self._work())

    async def submit(self, frame: Frame, events_text: bytes | None) -> None:
        await self._backlog.reserve(len(frame.payload["events"]))
        await self._queue.put((frame, events_text))

    def close(self) -> None:
        try:
            self._queue.put_nowait(_STOP)
        except asyncio.QueueFull:
            self._server.spawn(self._queue.put(_STOP))

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            if item is _STOP:
                return
            frame, events_text = item
            try:
                result = await self._ingest.store(self._session, frame, events_text)
            finally:
                self._backlog.release(len(frame.payload["events"]))
            if result is None or not result.ack or self._faults.withhold_acks:
                continue
            payload = {"acked_id": frame.id, "received": result.received, "accepted": result.accepted,
                       "rejected": result.rejected}
            delay = self._faults.ack_delay
            if delay and delay > 0:
                asyncio.get_running_loop().call_later(delay, lambda p=payload: self._server.spawn(self._send_ack(p)))
            else:
                await self._send_ack(payload)

    async def _send_ack(self, payload: dict[str, Any]) -> None:
        frame_id = ("eba_" + payload["acked_id"])[:64]
        try:
            await self._session.send_signed(FrameType.EVENT_BATCH_ACK.value, frame_id, payload)
        except ConnectionClosed:
            return


class _IngestBacklog:
    """How many events of one session are parsed and waiting for (or in) storage (brain loop only)."""

    __slots__ = ("_room", "events")

    def __init__(self) -> None:
        self.events = 0
        self._room = asyncio.Event()

    async def reserve(self, n: int) -> None:
        while self.events and self.events + n > INGEST_QUEUE_EVENTS:
            self._room.clear()
            await self._room.wait()
        self.events += n

    def release(self, n: int) -> None:
        self.events -= n
        self._room.set()
