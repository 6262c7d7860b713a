"""The ``/ws/agent`` endpoint: upgrade gate, bearer check, hello/hello_ack, then the receive loop.

Every verified frame goes to the frame table (dispatch.FrameDispatch); this module owns only
what is WebSocket-specific: close codes on the socket, the idle timeout, the frame size cap and
the connection-level fault knobs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ..logs import get_logger
from ..protocol import (
    PROTOCOL_VERSION_TEXT,
    CloseCode,
    Frame,
    FrameType,
    ProtocolError,
    SignatureError,
    parse_frame,
)
from . import wire
from .agents import AgentRegistry
from .delivery import CommandDelivery
from .dispatch import FrameDispatch, FrameRejected
from .faults import BrainFaults
from .framelog import FrameLog
from .lanes import BatchIngest
from .records import AgentRow
from .server import BrainServer
from .session import Session
from .sessions import SessionHub
from .settings import BrainSettings

log = get_logger(__name__)

WS_PATH = "/ws/agent"
BRAIN_VERSION = "1.13.0"


class WsChannel:
    """A session's channel over its WebSocket (see session.Channel)."""

    def __init__(self, ws: ServerConnection, endpoint: AgentSocket) -> None:
        self.ws = ws
        self._endpoint = endpoint

    async def send(self, data: bytes) -> None:
        await self.ws.send(data)

    async def close(self, code: int, reason: str) -> None:
        await self._endpoint.close_ws(self.ws, code, reason)

    def abort(self) -> None:
        self.ws.transport.abort()


class AgentSocket:
    """One instance per brain; ``handle`` runs once per upgraded connection on the brain's loop."""

    def __init__(self, *, settings: BrainSettings, server: BrainServer, agents: AgentRegistry, hub: SessionHub,
                 frames: FrameDispatch, ingest: BatchIngest, commands: CommandDelivery, faults: BrainFaults,
                 frame_log: FrameLog) -> None:
        self._settings = settings
        self._server = server
        self._agents = agents
        self._hub = hub
        self._frames = frames
        self._ingest = ingest
        self._commands = commands
        self._faults = faults
        self._log = frame_log
        self.dropped_connections = 0
        server.mount_websocket(WS_PATH, self.handle, gate=self.gate, close=self.close_ws)

    async def gate(self, conn: ServerConnection, request: Any) -> Any:
        """websockets' process_request: the ``stall`` knob and refusing upgrades while shutting down."""
        if urlsplit(request.path).path != WS_PATH:
            return conn.respond(404, "z4j agents connect to /ws/agent\n")
        while self._faults.stall and not self._server.closing and conn.transport is not None and (
            not conn.transport.is_closing()
        ):
            await asyncio.sleep(0.05)
        if self._server.closing:
            conn.transport.abort()
            return conn.respond(503, "brain is shutting down\n")
        return None

    async def handle(self, ws: ServerConnection) -> None:
        try:
            await self._serve(ws)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("brain.session_failed")
            await self.close_ws(ws, CloseCode.INTERNAL_ERROR, "internal error")

    async def close_ws(self, ws: ServerConnection, code: int, reason: str) -> None:
        if ws.protocol.state is not State.OPEN:
            return
        self._hub.note_close(code, reason)
        try:
            await ws.close(code, reason[:120])
        except Exception:
            ws.transport.abort()

    async def _recv(self, ws: ServerConnection) -> bytes | None:
        try:
            async with asyncio.timeout(self._settings.idle_timeout):
                return await ws.recv(decode=False)
        except TimeoutError:
            await self.close_ws(ws, CloseCode.IDLE_TIMEOUT, "idle timeout")
            return None

    # -- handshake -----------------------------------------------------------------------------

    async def _serve(self, ws: ServerConnection) -> None:
        admitted = await self._admit(ws)
        if admitted is None:
            return
        agent, hello = admitted
        while self._faults.stall_hello_ack and not self._server.closing and ws.protocol.state is State.OPEN:
            await asyncio.sleep(0.05)
        if ws.protocol.state is not State.OPEN or self._server.closing:
            return
        sess = await self._send_hello_ack(ws, agent, hello)
        displaced = self._hub.add(sess)
        log.info("brain.session_opened", agent_id=agent.agent_id, session_id=sess.session_id,
                 worker_id=sess.worker_id, engines=hello.get("engines"))
        try:
            if await self._start_session(sess, displaced):
                await self._receive_loop(sess, ws)
        finally:
            self._hub.remove(sess)
            log.info("brain.session_closed", agent_id=agent.agent_id, session_id=sess.session_id,
                     close_code=ws.close_code)
            await self._hub.closed(sess)

    async def _admit(self, ws: ServerConnection) -> tuple[AgentRow, dict[str, Any]] | None:
        """Fault rejection, bearer token, then the hello; None once the socket has been closed."""
        code = self._faults.take_reject()
        if code is not None:
            await self.close_ws(ws, code, "rejected by fault knob")
            return None
        agent = self._agents.authenticate(ws.request.headers.get("Authorization"))
        if agent is None:
            await self.close_ws(ws, CloseCode.UNAUTHORIZED, "invalid bearer token")
            return None
        raw = await self._recv(ws)
        if raw is None:
            return None
        max_frame = self._faults.advertise_max_frame_size or self._settings.max_frame_size
        if len(raw) > max_frame:
            self._log.log_in(raw, None, None, agent)
            await self.close_ws(ws, CloseCode.BAD_FRAME, "frame too large")
            return None
        try:
            frame = parse_frame(raw)
        except ProtocolError:
            self._log.log_in(raw, None, None, agent)
            await self.close_ws(ws, CloseCode.BAD_FRAME, "first frame must be hello")
            return None
        self._log.log_in(raw, frame.type.value, frame.id, agent)
        refusal = self._hello_refusal(frame, agent)
        if refusal is not None:
            await self.close_ws(ws, *refusal)
            return None
        self._agents.note_hello(agent, frame.payload)
        return agent, frame.payload

    @staticmethod
    def _hello_refusal(frame: Frame, agent: AgentRow) -> tuple[int, str] | None:
        if frame.type is not FrameType.HELLO:
            return CloseCode.BAD_FRAME, "first frame must be hello"
        if frame.payload.get("protocol_version") != PROTOCOL_VERSION_TEXT:
            return CloseCode.UPGRADE_REQUIRED, "unsupported protocol_version"
        if agent.revoked:
            return CloseCode.UNAUTHORIZED, "agent revoked"
        return None

    async def _send_hello_ack(self, ws: ServerConnection, agent: AgentRow, hello: dict[str, Any]) -> Session:
        sess = Session(WsChannel(ws, self), agent, hello,
                       self._faults.advertise_max_frame_size or self._settings.max_frame_size,
                       strict=self._settings.strict_verify, on_send=self._log.session_sent, clock=self._settings.now)
        ack_id = "hack_" + uuid.UUID(sess.session_id).hex[:12]
        ack = wire.unsigned(FrameType.HELLO_ACK.value, ack_id, {
            "protocol_version": hello["protocol_version"],
            "brain_version": BRAIN_VERSION,
            "agent_id": agent.agent_id,
            "project_id": agent.project_uuid,
            "session_id": sess.session_id,
            "heartbeat_interval_seconds": self._settings.heartbeat_interval,
            "max_frame_size_bytes": sess.max_frame_size,
        }, ts=wire.wall_text(sess.now()))
        await sess.send_raw(ack, FrameType.HELLO_ACK.value, ack_id)
        return sess

    async def _start_session(self, sess: Session, displaced: Session | None) -> bool:
        """Close the session it displaced, run open hooks, push pending commands; False if it must end now."""
        if displaced is not None:
            await self._hub.close(displaced, CloseCode.DISPLACED, "displaced by a newer connection")
        if sess.agent.revoked:
            await self._hub.close(sess, CloseCode.REVOKED, "agent revoked")
            return False
        await self._hub.opened(sess)
        await self._commands.dispatch_pending(sess.agent.agent_id)
        return True

    # -- after the handshake -------------------------------------------------------------------

    async def _receive_loop(self, sess: Session, ws: ServerConnection) -> None:
        lane = self._ingest.open_lane(sess)
        try:
            while True:
                raw = await self._recv(ws)
                if raw is None:
                    return
                frame = await self._read_frame(sess, raw)
                if frame is None:
                    return
                sess.agent.last_seen_at = time.time()
                try:
                    await self._frames.deliver(sess, *frame)
                except FrameRejected as exc:
                    await self._hub.close(sess, exc.code, exc.reason)
                    return
        finally:
            lane.close()

    async def _read_frame(self, sess: Session, raw: bytes) -> tuple[Frame, bytes | None] | None:
        """Verify one inbound frame; None once the session has been dropped or closed for it."""
        agent = sess.agent
        if self._faults.take_drop():
            self._log.log_in(raw, None, None, agent, sess.session_id)
            self.dropped_connections += 1
            log.info("brain.connection_dropped", agent_id=agent.agent_id, session_id=sess.session_id)
            sess.abort()
            return None
        if len(raw) > sess.max_frame_size:
            self._log.log_in(raw, None, None, agent, sess.session_id)
            await self._hub.close(sess, CloseCode.BAD_FRAME, "frame too large")
            return None
        try:
            frame, events_text = sess.verifier.verify(raw)
        except (SignatureError, ProtocolError) as exc:
            forged = isinstance(exc, SignatureError)
            self._log.log_in(raw, None, None, agent, sess.session_id)
            log.warning("brain.frame_rejected", agent_id=agent.agent_id, reason=str(exc), code=4403 if forged else 4400)
            if forged:
                await self._hub.close(sess, CloseCode.FORBIDDEN, "signature or replay check failed")
            else:
                await self._hub.close(sess, CloseCode.BAD_FRAME, "malformed frame")
            return None
        self._log.log_in(raw, frame.type.value, frame.id, agent, sess.session_id)
        return frame, events_text
