"""One agent session as the brain holds it, whatever carries it (lives on the brain's event loop).

A session is the HMAC binding (agent, project, session id), the inbound verifier, the outbound
signer and a channel: the transport's way to send bytes and to close. The WebSocket endpoint
gives each connection a channel over its socket; another transport (HTTP long-poll) can give
its own, and everything that talks to agents (command delivery, fault frames, server-side
modules) goes through ``send_signed`` and ``close`` without knowing which.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..protocol import SessionBinding
from .verify import BrainVerifier
from .wire import OutboundSigner

if TYPE_CHECKING:
    from .records import AgentRow


class Channel(Protocol):
    """How a session's frames leave the brain (implemented per transport)."""

    async def send(self, data: bytes) -> None:
        """Deliver one frame; raise ``websockets.exceptions.ConnectionClosed`` if the peer is gone."""

    async def close(self, code: int, reason: str) -> None:
        """End the session with a close code (WebSocket close; a long-poll transport invalidates it)."""

    def abort(self) -> None:
        """Drop the connection without a goodbye."""


class Session:
    """Connection state after hello: binding, verifier, outbound signer and the send lock."""

    def __init__(
        self, channel: Channel, agent: AgentRow, hello: dict[str, Any], max_frame_size: int, *, strict: bool = False,
        on_send: Callable[[bytes, str, str, Session], None] | None = None, session_id: str | None = None,
        worker_slot: bool = True, clock: Callable[[], float] = time.time,
    ) -> None:
        self.channel = channel
        self._on_send = on_send
        self.agent = agent
        self.hello = hello
        self.session_id = session_id or str(uuid.uuid4())
        worker_id = hello.get("worker_id")
        self.worker_id = worker_id if isinstance(worker_id, str) else None
        # A session in a worker slot displaces the older session of the same (agent, worker_id).
        self.worker_slot = worker_slot
        self.max_frame_size = max_frame_size
        self.binding = SessionBinding(agent.agent_id, agent.project_uuid, self.session_id)
        #: The brain's wall clock: what its signatures carry and its replay checks compare with.
        self.now = clock
        self.verifier = BrainVerifier(agent.key, self.binding, strict=strict, clock=clock)
        self.signer = OutboundSigner(agent.key, self.binding, clock)
        self.send_lock = asyncio.Lock()
        self.last_sent: bytes | None = None
        self.opened_at = time.time()
        self.closing = False
        self.ingest_lane: Any = None  # set by whoever feeds this session's event batches (lanes.IngestLane)

    def __repr__(self) -> str:
        return f"Session(agent_id={self.agent.agent_id!r}, session_id={self.session_id!r}, worker_id={self.worker_id!r})"

    @property
    def slot(self) -> tuple[str, str | None] | None:
        return (self.agent.agent_id, self.worker_id) if self.worker_slot else None

    def capabilities_for(self, engine: str) -> list[str]:
        caps = self.hello.get("capabilities")
        if not isinstance(caps, dict):
            return []
        found = caps.get(engine)
        return list(found) if isinstance(found, list) else []

    def _record(self, data: bytes, ftype: str, frame_id: str) -> None:
        # Recorded before the send so a test that has just read the frame also finds it logged.
        if self._on_send is not None:
            self._on_send(data, ftype, frame_id, self)

    async def send_raw(self, data: bytes, ftype: str, frame_id: str) -> None:
        async with self.send_lock:
            self._record(data, ftype, frame_id)
            await self.channel.send(data)

    async def send_signed(self, ftype: str, frame_id: str, payload: dict[str, Any], **options: Any) -> bytes:
        """Sign and send under one lock so seq order on the wire matches signing order."""
        async with self.send_lock:
            data = self.signer.sign(ftype, frame_id, payload, **options)
            self._record(data, ftype, frame_id)
            await self.channel.send(data)
            self.last_sent = data
            return data

    async def close(self, code: int, reason: str) -> None:
        self.closing = True
        await self.channel.close(code, reason)

    def abort(self) -> None:
        self.closing = True
        self.channel.abort()
