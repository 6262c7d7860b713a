"""Commands: created by the operator (a test), delivered to a session, answered by the agent (§6)."""

from __future__ import annotations

import json
import math
import secrets
import time
import uuid
from typing import Any

from websockets.exceptions import ConnectionClosed

from ..logs import get_logger
from ..protocol import Frame, FrameType
from .agents import AgentRegistry
from .changes import Changes
from .records import (
    COMPLETED,
    DISPATCHED,
    FAILED,
    PENDING,
    REDELIVERABLE_ACTIONS,
    RETRY_FAMILY,
    AgentRow,
    CommandRecord,
    MutableCommand,
)
from .session import Session
from .sessions import SessionHub
from .settings import BrainSettings

log = get_logger(__name__)

PENDING_DRAIN_LIMIT = 500
_OPERATOR = object()


class CommandDelivery:
    """The command rows and their lifecycle: pending -> dispatched -> completed | failed | timeout."""

    def __init__(self, changes: Changes, agents: AgentRegistry, hub: SessionHub, settings: BrainSettings) -> None:
        self._changes = changes
        self._agents = agents
        self._hub = hub
        self._settings = settings
        self._commands: dict[str, MutableCommand] = {}
        self._operator_id = str(uuid.uuid4())

    def create(
        self, action: str, parameters: dict[str, Any] | None = None, *, agent_id: str | None = None,
        target: dict[str, Any] | None = None, engine: str | None = None, session_id: str | None = None,
        issued_by: Any = _OPERATOR,
    ) -> MutableCommand:
        """Queue a command (validated like the real brain's API); deliver it with ``dispatch_pending``.

        ``session_id`` pins it to that one session: sent only there, never re-driven to another
        (how the real brain sends schedule activation/control). ``issued_by`` defaults to this
        brain's operator id; pass None for brain-issued commands.
        """
        if not isinstance(action, str) or not 1 <= len(action) <= 80:
            raise ValueError("send_command(action=...) must be a string of 1..80 characters")
        params = dict(parameters or {})
        if engine is not None and "engine" not in params and action not in ("bulk_retry", "requeue_dead_letter"):
            params["engine"] = engine
        try:
            params = json.loads(json.dumps(params, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"send_command(parameters=...) must be JSON-serializable: {exc}") from None
        tgt = dict(target) if target is not None else default_target(action, params, engine)
        now, timeout = time.time(), self._settings.command_timeout
        with self._changes.lock:
            row = self._agents.resolve(agent_id)
            cmd = MutableCommand(
                id=str(uuid.uuid4()), action=action, agent_id=row.agent_id, parameters=params, target=tgt,
                created_at=now, deadline=now + timeout,
                timeout_seconds=max(1, min(3600, math.ceil(timeout))),
                issued_by=self._operator_id if issued_by is _OPERATOR else issued_by, pinned_session=session_id,
            )
            self._commands[cmd.id] = cmd
            self._changes.bump()
        log.info("brain.command_created", command_id=cmd.id, action=action, agent_id=row.agent_id)
        return cmd

    def record(self, command_id: str) -> CommandRecord:
        with self._changes.lock:
            cmd = self._commands.get(command_id)
            if cmd is None:
                raise KeyError(f"unknown command id {command_id!r}")
            if cmd.expire(time.time()):
                self._changes.bump()
            return cmd.snapshot()

    def records(self) -> list[CommandRecord]:
        with self._changes.lock:
            return [self.record(cid) for cid in list(self._commands)]

    def withheld_reason(self, command_id: str) -> str | None:
        with self._changes.lock:
            return self._commands[command_id].withheld_reason

    # -- frames from the agent (handlers of dispatch.FrameDispatch) ----------------------------

    def on_ack(self, session: Session, frame: Frame, _events_text: bytes | None) -> None:
        with self._changes.lock:
            cmd = self._commands.get(frame.id)
            if cmd is not None and cmd.agent_id == session.agent.agent_id:
                cmd.expire(time.time())
                cmd.acked = True
                cmd.ack_payload = frame.payload
            self._changes.bump()

    def on_result(self, session: Session, frame: Frame, _events_text: bytes | None) -> None:
        with self._changes.lock:
            self._record_result(session.agent, frame.id, frame.payload, time.time())
            self._changes.bump()

    def _record_result(self, agent: AgentRow, command_id: str, payload: dict[str, Any], now: float) -> None:
        try:
            uuid.UUID(command_id)
        except ValueError:
            return
        cmd = self._commands.get(command_id)
        if cmd is None or cmd.agent_id != agent.agent_id:
            return
        cmd.expire(now)
        if cmd.status not in (PENDING, DISPATCHED):
            return
        cmd.status = COMPLETED if payload.get("status") == "success" else FAILED
        result = payload.get("result")
        cmd.result = result if isinstance(result, dict) else None
        error = payload.get("error")
        cmd.error = error if isinstance(error, str) else None
        cmd.result_payload = payload
        cmd.completed_at = now
        log.info("brain.command_finished", command_id=cmd.id, action=cmd.action, status=cmd.status)

    # -- delivery (brain loop) -----------------------------------------------------------------

    def _pick_session(self, cmd: MutableCommand) -> Session | None:
        candidates = sorted(
            (s for s in self._hub.sessions(cmd.agent_id) if not s.closing
             and (cmd.pinned_session is None or s.session_id == cmd.pinned_session)),
            key=lambda s: s.opened_at, reverse=True,
        )
        if cmd.action in RETRY_FAMILY:
            engine = cmd.target.get("engine") or cmd.parameters.get("engine")
            if engine:
                capable = [s for s in candidates if "retry_by_reference_v1" in s.capabilities_for(engine)]
                if candidates and not capable:
                    cmd.withheld_reason = f"no session advertises retry_by_reference_v1 for engine {engine!r}"
                candidates = capable
        return candidates[0] if candidates else None

    def _deliverable(self, cmd: MutableCommand) -> bool:
        if cmd.status == PENDING:
            return True
        # Re-drive only what the real brain re-drives, and only once its session is gone.
        return (
            cmd.status == DISPATCHED and cmd.action in REDELIVERABLE_ACTIONS and cmd.pinned_session is None
            and cmd.dispatched_session not in self._hub
        )

    def _claim(self, cmd: MutableCommand, now: float) -> tuple[Session, dict[str, Any]] | None:
        """Mark one command dispatched to a session (caller holds the lock); None if it cannot go now."""
        cmd.expire(now)
        if not self._deliverable(cmd):
            return None
        sess = self._pick_session(cmd)
        if sess is None:
            return None
        cmd.status = DISPATCHED
        cmd.dispatched_at = time.time()
        cmd.deliveries += 1
        cmd.delivery_claim_token = secrets.token_hex(16)
        cmd.dispatched_session = sess.session_id
        cmd.withheld_reason = None
        payload = {
            "action": cmd.action, "target": cmd.target, "parameters": cmd.parameters,
            "timeout_seconds": cmd.timeout_seconds, "issued_by": cmd.issued_by,
            "delivery_claim_token": cmd.delivery_claim_token,
        }
        self._changes.bump()
        return sess, payload

    async def dispatch_pending(self, agent_id: str) -> None:
        """Send the agent's deliverable commands (at most 500, oldest first) to its sessions."""
        now = time.time()
        with self._changes.lock:
            queued = [c for c in self._commands.values() if c.agent_id == agent_id][:PENDING_DRAIN_LIMIT * 4]
        sent = 0
        for cmd in queued:
            if sent >= PENDING_DRAIN_LIMIT:
                break
            with self._changes.lock:
                claimed = self._claim(cmd, now)
            if claimed is None:
                continue
            sess, payload = claimed
            try:
                await sess.send_signed(FrameType.COMMAND.value, cmd.id, payload)
            except ConnectionClosed:
                with self._changes.lock:
                    if cmd.status == DISPATCHED and cmd.dispatched_session == sess.session_id:
                        cmd.status = PENDING
                        cmd.dispatched_session = None
                continue
            sent += 1
            log.info("brain.command_dispatched", command_id=cmd.id, action=cmd.action, session_id=sess.session_id)


def default_target(action: str, params: dict[str, Any], engine: str | None) -> dict[str, Any]:
    """The target the real brain attaches for this action (protocol.md section 6.2)."""
    flt = params.get("filter") if isinstance(params.get("filter"), dict) else None
    eng = (flt or {}).get("engine") or params.get("engine") or engine
    if action == "bulk_retry" or flt is not None:
        target: dict[str, Any] = {"type": "bulk", "id": None}
    elif action == "rate_limit":
        target = {"type": "task", "id": params.get("task_name")}
    elif "task_id" in params:
        target = {"type": "task", "id": f"{eng}:{params['task_id']}"}
    elif "worker_name" in params:
        target = {"type": "worker", "id": params["worker_name"]}
    elif "queue" in params and action == "purge_queue":
        target = {"type": "queue", "id": params["queue"]}
    elif "schedule_id" in params:
        target = {"type": "schedule", "id": params["schedule_id"]}
    elif "scheduler" in params:
        target = {"type": "scheduler", "id": params["scheduler"]}
    else:
        target = {"type": "project", "id": None}
    if eng:
        target["engine"] = eng
    if params.get("scheduler"):
        target["scheduler"] = params["scheduler"]
    return target
