"""The HTTPS long-poll endpoints, with brain 1.13's semantics (protocol.md 8.4), on the brain's port.

* ``GET /api/v1/agent/commands?wait=N&max_frames=M``: bearer-authenticated; the session is keyed
  by ``(agent, X-Z4J-Session-Nonce)`` and the nonce is the HMAC's session binding.
  ``max_frames=0`` is the non-claiming connect probe: it creates the session (and retires the
  agent's invalidated nonces); otherwise pending commands are claimed for this session and
  returned as signed frames, waiting up to ``wait`` seconds (at most 60) for one to come.
* ``POST /api/v1/agent/events`` with ``{"frames": [...]}`` (1..500 signed frames, each at most
  1 MiB, else 422): each frame is verified in order. A signature or replay failure invalidates
  the session (this and every later request under the nonce gets 409) and counts the rest as
  rejected; an unparseable frame is dropped and counted accepted; a stored event batch, or any
  other frame handled, counts accepted; a batch whose storage failed (or whose ack the
  ``withhold_acks`` knob holds back) counts rejected, so the agent sends it again. The answer is
  ``{"accepted", "rejected", "errors", "error_code"}``.
* Both answer with ``X-Z4J-Agent-Id``, ``X-Z4J-Project-Id`` and ``X-Z4J-LongPoll-Worker``.
* A request body over ``max_body_bytes`` (8 KiB, the real brain's default
  ``Z4J_MAX_PAYLOAD_SIZE_BYTES``) gets 413 before anything else.

A long-poll session is a ``session.Session`` whose channel queues the brain's frames for the
next poll, registered with the hub without a worker slot (no ``agent_workers`` row, like the
real brain), so command delivery and the fault frames reach it like a WebSocket session.
Sessions idle for 5 minutes are dropped; at most 16 per agent and 4096 in all (then 503).

Fault knobs (``brain.longpoll.faults``, see ``LongPollFaults``): forced statuses (409, 5xx, 429
with ``Retry-After``), 413 over a frame count, 422 for a marked frame, slow polls. The brain's
own ``faults.stall`` holds these requests too, and ``faults.withhold_acks`` / ``ack_delay``
act on uploads.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed

from ..logs import get_logger
from ..protocol import DEFAULT_MAX_FRAME_BYTES, FrameType, ProtocolError, ProtocolVersionError, SignatureError
from .agents import AgentRegistry
from .delivery import CommandDelivery
from .dispatch import FrameDispatch, FrameRejected
from .faults import BrainFaults
from .framelog import FrameLog
from .http_api import HttpError, HttpRequest, HttpResponse
from .lanes import BatchIngest
from .records import AgentRow
from .server import BrainServer
from .session import Session
from .sessions import SessionHub
from .settings import BrainSettings

log = get_logger(__name__)

EVENTS_PATH = "/api/v1/agent/events"
COMMANDS_PATH = "/api/v1/agent/commands"
MAX_WAIT_SECONDS = 60
MAX_UPLOAD_FRAMES = 500
SESSION_IDLE_TTL = 300.0
MAX_SESSIONS_PER_AGENT = 16
MAX_SESSIONS = 4096
#: Brain 1.13 refuses any REST body over Z4J_MAX_PAYLOAD_SIZE_BYTES (default 8 KiB) with 413,
#: long-poll uploads included.
DEFAULT_MAX_BODY_BYTES = 8192
# A live long-poll agent always has a poll in flight or starts the next one at once. One whose
# poll was cut off by the client (the agent stopped) and that sends nothing for this long is
# taken as gone, so the agent reads offline (a WebSocket session ends with its socket).
GONE_AFTER_SECONDS = 2.0


@dataclass
class LongPollFaults:
    """Knobs for the long-poll endpoints; plain attributes, set any time.

    * ``fail_next(n, status, retry_after=None, path=None)``: answer the next ``n`` requests (to
      ``"events"``, ``"commands"`` or either) with ``status`` and no work done.
    * ``invalidate_next(n)``: the next ``n`` requests invalidate their session and get 409.
    * ``max_upload_frames``: an upload with more frames gets 413.
    * ``refuse_marker``: an upload with a frame containing this text gets 422 (content the
      brain refuses; the agent bisects to that frame).
    * ``poll_delay``: each command poll answers no sooner than this many seconds.
    """

    max_upload_frames: int | None = None
    refuse_marker: str | None = None
    poll_delay: float = 0.0
    _fail: list[tuple[int, float | None, str | None]] = field(default_factory=list)
    _invalidate: int = 0

    def fail_next(self, n: int, status: int = 503, retry_after: float | None = None, path: str | None = None) -> None:
        if path not in (None, "events", "commands"):
            raise ValueError("longpoll.faults.fail_next(path=...) is 'events', 'commands' or None")
        self._fail.extend([(int(status), retry_after, path)] * n)

    def invalidate_next(self, n: int = 1) -> None:
        self._invalidate += n

    def reset(self) -> None:
        self.max_upload_frames = self.refuse_marker = None
        self.poll_delay = 0.0
        self._fail.clear()
        self._invalidate = 0

    def take_failure(self, path: str) -> HttpResponse | None:
        for i, (status, retry_after, only) in enumerate(self._fail):
            if only in (None, path):
                del self._fail[i]
                headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
                return HttpResponse.json(status, {"error": "fault_knob", "status": status}, headers)
        return None

    def take_invalidation(self) -> bool:
        if self._invalidate <= 0:
            return False
        self._invalidate -= 1
        return True


class LongPollChannel:
    """A session's channel (session.Channel): frames wait here for the next command poll."""

    def __init__(self, endpoint: LongPollEndpoint, key: tuple[str, str]) -> None:
        self._endpoint = endpoint
        self._key = key
        self.pending: deque[bytes] = deque()
        self.changed = asyncio.Event()
        self.closed = False

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionClosed(None, None)
        self.pending.append(data)
        self.changed.set()

    async def close(self, code: int, reason: str) -> None:
        self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.changed.set()
            self._endpoint.invalidate(self._key)


@dataclass
class _LpSession:
    session: Session
    channel: LongPollChannel
    last_used: float
    leases: int = 0


class LongPollEndpoint:
    """One per brain: routes the two endpoints on the brain's HTTP router (all on the brain's loop)."""

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
        self._brain_faults = faults
        self._log = frame_log
        self.faults = LongPollFaults()
        #: Like the real brain's Z4J_MAX_PAYLOAD_SIZE_BYTES: a larger request body gets 413.
        self.max_body_bytes = DEFAULT_MAX_BODY_BYTES
        self._sessions: dict[tuple[str, str], _LpSession] = {}
        self._invalid: dict[tuple[str, str], float] = {}
        self.requests = {"events": 0, "commands": 0}
        #: (path, status) of every request answered with an error status, oldest first.
        self.refusals: list[tuple[str, int]] = []
        server.router.route("GET", COMMANDS_PATH, self.commands)
        server.router.route("POST", EVENTS_PATH, self.events)

    def sessions(self) -> list[Session]:
        return [s.session for s in self._sessions.values()]

    # -- the endpoints -------------------------------------------------------------------------
    async def commands(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self._commands_answer(request)
        except HttpError as exc:
            self.refusals.append(("commands", exc.response.status))
            raise

    async def events(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self._events_answer(request)
        except HttpError as exc:
            self.refusals.append(("events", exc.response.status))
            raise

    async def _commands_answer(self, request: HttpRequest) -> HttpResponse:
        agent, headers = await self._admit(request, "commands")
        max_frames = self._int_arg(request, "max_frames", 50, 0, MAX_UPLOAD_FRAMES)
        wait = self._int_arg(request, "wait", 30, 0, MAX_WAIT_SECONDS)
        lp = await self._session(request, agent, establishes=max_frames == 0)
        lp.leases += 1
        try:
            if max_frames == 0:
                return HttpResponse.json(200, {"frames": []}, headers)
            frames = await self._poll(lp, agent, max_frames, wait)
        except asyncio.CancelledError:  # the client hung up mid-poll
            asyncio.get_running_loop().call_later(GONE_AFTER_SECONDS, self._drop_if_gone, lp)
            raise
        finally:
            lp.leases -= 1
            lp.last_used = time.monotonic()
        return HttpResponse.json(200, {"frames": frames}, headers)

    async def _events_answer(self, request: HttpRequest) -> HttpResponse:
        if len(request.body) > self.max_body_bytes:
            self.requests["events"] += 1
            raise HttpError(413, f"request body over {self.max_body_bytes} bytes")
        agent, headers = await self._admit(request, "events")
        frames = self._upload_frames(request)
        if self.faults.max_upload_frames is not None and len(frames) > self.faults.max_upload_frames:
            raise HttpError(413, f"more than {self.faults.max_upload_frames} frames (fault knob)")
        marker = self.faults.refuse_marker
        if marker is not None and any(marker in f for f in frames):
            raise HttpError(422, "a frame was refused (fault knob)")
        lp = await self._session(request, agent, establishes=False)
        lp.leases += 1
        try:
            verdict = await self._take(lp, [f.encode("utf-8") for f in frames])
        finally:
            lp.leases -= 1
            lp.last_used = time.monotonic()
        if verdict.pop("invalidated"):
            raise HttpError(409, "long-poll session invalidated; reconnect with a fresh session nonce", headers)
        delay = self._brain_faults.ack_delay
        if delay and delay > 0:
            await asyncio.sleep(delay)
        return HttpResponse.json(200, verdict, headers)

    # -- admission -----------------------------------------------------------------------------
    async def _admit(self, request: HttpRequest, path: str) -> tuple[AgentRow, dict[str, str]]:
        self.requests[path] += 1
        while self._brain_faults.stall and not self._server.closing:
            await asyncio.sleep(0.05)
        failure = self.faults.take_failure(path)
        if failure is not None:
            raise HttpError(failure.status, "fault knob", failure.headers)
        agent = self._agents.authenticate(request.header("authorization"))
        if agent is None:
            raise HttpError(401, "invalid agent token")
        headers = {"X-Z4J-Agent-Id": agent.agent_id, "X-Z4J-Project-Id": agent.project_uuid,
                   "X-Z4J-LongPoll-Worker": str(os.getpid())}
        if self.faults.take_invalidation():
            self.invalidate((agent.agent_id, request.header("x-z4j-session-nonce") or ""))
            raise HttpError(409, "long-poll session invalidated (fault knob)", headers)
        return agent, headers

    @staticmethod
    def _int_arg(request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
        raw = request.arg(name)
        try:
            value = default if raw is None else int(raw)
        except ValueError:
            raise HttpError(422, f"{name} must be an integer") from None
        if not low <= value <= high:
            raise HttpError(422, f"{name} must be in {low}..{high}")
        return value

    @staticmethod
    def _upload_frames(request: HttpRequest) -> list[str]:
        body = request.json()
        frames = body.get("frames") if isinstance(body, dict) else None
        if not isinstance(frames, list) or not 1 <= len(frames) <= MAX_UPLOAD_FRAMES:
            raise HttpError(422, f"frames must be a list of 1..{MAX_UPLOAD_FRAMES} strings")
        for i, frame in enumerate(frames):
            if not isinstance(frame, str):
                raise HttpError(422, f"frames[{i}] is not a string")
            if len(frame.encode("utf-8")) > DEFAULT_MAX_FRAME_BYTES:
                raise HttpError(422, f"frames[{i}] is over {DEFAULT_MAX_FRAME_BYTES} bytes")
        return frames

    async def _session(self, request: HttpRequest, agent: AgentRow, *, establishes: bool) -> _LpSession:
        nonce = request.header("x-z4j-session-nonce") or ""
        key = (agent.agent_id, nonce)
        self._prune()
        if key in self._invalid:
            raise HttpError(409, "long-poll session invalidated; reconnect with a fresh session nonce")
        lp = self._sessions.get(key)
        if lp is not None:
            lp.last_used = time.monotonic()
            return lp
        stale = [k for k in self._invalid if k[0] == agent.agent_id]
        if stale and not establishes:
            raise HttpError(409, "long-poll session invalidated; perform the connect probe with a fresh nonce")
        for k in stale:
            del self._invalid[k]
        self._make_room(agent.agent_id)
        return await self._open(key, agent, request)

    async def _open(self, key: tuple[str, str], agent: AgentRow, request: HttpRequest) -> _LpSession:
        channel = LongPollChannel(self, key)
        contracts = [c.split("=", 1)[0].strip() for c in (request.header("x-z4j-retry-contracts") or "").split(",")
                     if c.strip().endswith("=1")]
        features = [f.strip() for f in (request.header("x-z4j-runtime-features") or "").split(",") if f.strip()]
        hello = {"capabilities": {engine: ["retry_by_reference_v1"] for engine in contracts},
                 "runtime_features": features, "transport": "longpoll"}
        sess = Session(channel, agent, hello, DEFAULT_MAX_FRAME_BYTES, strict=self._settings.strict_verify,
                       on_send=self._log_out, session_id=key[1], worker_slot=False, clock=self._settings.now)
        lp = _LpSession(sess, channel, time.monotonic())
        self._sessions[key] = lp
        self._hub.add(sess)
        await self._hub.opened(sess)
        log.info("brain.longpoll_session_opened", agent_id=agent.agent_id, session_id=sess.session_id)
        return lp

    def _make_room(self, agent_id: str) -> None:
        mine = [(k, lp) for k, lp in self._sessions.items() if k[0] == agent_id]
        if len(mine) >= MAX_SESSIONS_PER_AGENT or len(self._sessions) >= MAX_SESSIONS:
            idle = sorted((lp.last_used, k) for k, lp in mine if lp.leases == 0)
            if not idle:
                raise HttpError(503, "long-poll session registry is full", {"Retry-After": "1"})
            self._drop(idle[0][1])

    def invalidate(self, key: tuple[str, str]) -> None:
        """Every later request under this nonce gets 409 (until it idles out)."""
        self._invalid[key] = time.monotonic()
        lp = self._sessions.get(key)
        if lp is not None:
            lp.channel.closed = True
            lp.channel.changed.set()
            self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        lp = self._sessions.pop(key, None)
        if lp is None:
            return
        lp.session.closing = True
        self._hub.remove(lp.session)
        self._server.spawn(self._hub.closed(lp.session))

    def _drop_if_gone(self, lp: _LpSession) -> None:
        key = (lp.session.agent.agent_id, lp.session.session_id)
        if self._sessions.get(key) is lp and lp.leases == 0 and time.monotonic() - lp.last_used >= GONE_AFTER_SECONDS:
            log.info("brain.longpoll_session_gone", agent_id=key[0], session_id=key[1])
            self._drop(key)

    def _prune(self) -> None:
        now = time.monotonic()
        for key in [k for k, lp in self._sessions.items() if lp.leases == 0 and now - lp.last_used > SESSION_IDLE_TTL]:
            self._drop(key)
        for key in [k for k, at in self._invalid.items() if now - at > SESSION_IDLE_TTL]:
            del self._invalid[key]

    # -- the work ------------------------------------------------------------------------------
    async def _poll(self, lp: _LpSession, agent: AgentRow, max_frames: int, wait: int) -> list[str]:
        await self._commands.dispatch_pending(agent.agent_id)
        channel = lp.channel
        deadline = time.monotonic() + wait
        if self.faults.poll_delay > 0:
            await asyncio.sleep(self.faults.poll_delay)
        while not channel.pending and not channel.closed and time.monotonic() < deadline:
            channel.changed.clear()
            try:
                await asyncio.wait_for(channel.changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        if channel.closed:
            if agent.revoked:
                raise HttpError(401, "invalid agent token")
            raise HttpError(409, "long-poll session invalidated; reconnect with a fresh session nonce")
        out = []
        while channel.pending and len(out) < max_frames:
            out.append(channel.pending.popleft().decode("utf-8"))
        return out

    async def _take(self, lp: _LpSession, frames: list[bytes]) -> dict[str, Any]:
        sess, agent = lp.session, lp.session.agent
        accepted = rejected = authenticated = 0
        errors: list[str] = []
        for i, raw in enumerate(frames):
            try:
                frame, events_text = sess.verifier.verify(raw)
            except SignatureError as exc:
                self._log.log_in(raw, None, None, agent, sess.session_id)
                log.warning("brain.longpoll_frame_rejected", agent_id=agent.agent_id, reason=str(exc))
                errors.append(f"verify failed: {exc}")
                self.invalidate((agent.agent_id, sess.session_id))
                return {"accepted": accepted, "rejected": rejected + len(frames) - i, "errors": errors[:10],
                        "error_code": None, "invalidated": True}
            except ProtocolVersionError as exc:
                rejected += 1
                errors.append(f"version skew (retry): {exc}")
                continue
            except ProtocolError:
                self._log.log_in(raw, None, None, agent, sess.session_id)
                accepted += 1  # unparseable: re-sending cannot help, so it is dropped and confirmed
                continue
            self._log.log_in(raw, frame.type.value, frame.id, agent, sess.session_id)
            authenticated += 1
            if await self._handle(sess, frame, events_text):
                accepted += 1
            else:
                rejected += 1
                errors.append("transient; agent re-sends")
        if authenticated:
            agent.last_seen_at = time.time()
        return {"accepted": accepted, "rejected": rejected, "errors": errors[:10], "error_code": None,
                "invalidated": False}

    async def _handle(self, sess: Session, frame: Any, events_text: bytes | None) -> bool:
        """True when the frame is confirmed (stored, handled, or dropped for good)."""
        if frame.type is FrameType.EVENT_BATCH:
            if not isinstance(frame.payload.get("events"), list):
                return True  # malformed for good: dropped
            result = await self._ingest.store(sess, frame, events_text)
            return result is not None and result.ack and not self._brain_faults.withhold_acks
        try:
            await self._frames.deliver(sess, frame, events_text)
        except FrameRejected as exc:
            log.warning("brain.longpoll_frame_dropped", agent_id=sess.agent.agent_id, reason=exc.reason)
        return True

    def _log_out(self, data: bytes, ftype: str, frame_id: str, sess: Session) -> None:
        self._log.log_out(data, ftype, frame_id, sess.agent.agent_id, sess.session_id)
