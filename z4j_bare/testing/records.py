"""Value objects the local brain hands to tests: credentials and command records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Command lifecycle as the real brain reports it (protocol.md section 6.1).
PENDING = "pending"
DISPATCHED = "dispatched"
COMPLETED = "completed"
FAILED = "failed"
TIMEOUT = "timeout"
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, TIMEOUT})

# Actions the real brain re-drives to a new session when the outcome is unknown; everything
# else is at-most-once (left dispatched until it times out).
REDELIVERABLE_ACTIONS = frozenset(
    {
        "schedule.fire", "schedule.trigger_now", "schedule.trigger_now.via_scheduler", "cancel_task",
        "reconcile_task", "schedule.resync", "schedule.enable", "schedule.disable",
    }
)
RETRY_FAMILY = frozenset({"retry_task", "bulk_retry"})


@dataclass(frozen=True)
class AgentCredentials:
    """What the brain returns once when an agent is minted. Secrets are kept out of the repr."""

    brain_url: str
    token: str = field(repr=False)
    hmac_secret: str = field(repr=False)
    project_id: str
    agent_id: str
    project_uuid: str
    name: str = "agent-1"

    def env(self) -> dict[str, str]:
        """The ``Z4J_*`` variables an agent process needs."""
        return {
            "Z4J_BRAIN_URL": self.brain_url,
            "Z4J_TOKEN": self.token,
            "Z4J_HMAC_SECRET": self.hmac_secret,
            "Z4J_PROJECT_ID": self.project_id,
        }

    def kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``install_agent``."""
        return {
            "brain_url": self.brain_url,
            "token": self.token,
            "hmac_secret": self.hmac_secret,
            "project_id": self.project_id,
        }


@dataclass(frozen=True)
class CommandRecord:
    """A snapshot of one command as the brain sees it."""

    id: str
    action: str
    status: str
    result: dict[str, Any] | None
    error: str | None
    acked: bool
    ack_payload: dict[str, Any] | None
    created_at: float
    completed_at: float | None
    agent_id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    dispatched_at: float | None = None
    deliveries: int = 0
    delivery_claim_token: str | None = None
    result_payload: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass
class MutableCommand:
    """The brain's own row for a command (mutated under the brain's lock)."""

    id: str
    action: str
    agent_id: str
    parameters: dict[str, Any]
    target: dict[str, Any]
    created_at: float
    deadline: float
    timeout_seconds: int
    issued_by: str | None
    status: str = PENDING
    result: dict[str, Any] | None = None
    error: str | None = None
    acked: bool = False
    ack_payload: dict[str, Any] | None = None
    completed_at: float | None = None
    dispatched_at: float | None = None
    deliveries: int = 0
    delivery_claim_token: str | None = None
    result_payload: dict[str, Any] | None = None
    withheld_reason: str | None = None
    dispatched_session: str | None = None
    pinned_session: str | None = None  # delivered only to this session, never re-driven elsewhere

    def snapshot(self) -> CommandRecord:
        return CommandRecord(
            id=self.id, action=self.action, status=self.status, result=self.result, error=self.error,
            acked=self.acked, ack_payload=self.ack_payload, created_at=self.created_at,
            completed_at=self.completed_at, agent_id=self.agent_id, parameters=dict(self.parameters),
            target=dict(self.target), dispatched_at=self.dispatched_at, deliveries=self.deliveries,
            delivery_claim_token=self.delivery_claim_token, result_payload=self.result_payload,
        )

    def expire(self, now: float) -> bool:
        if self.status in (PENDING, DISPATCHED) and now >= self.deadline:
            self.status = TIMEOUT
            self.completed_at = now
            return True
        return False


@dataclass
class AgentRow:
    """A minted agent and what the brain learned about it from its sessions."""

    agent_id: str
    name: str
    project_id: str
    project_uuid: str
    token_digest: str = field(repr=False)
    key: bytes = field(repr=False)
    revoked: bool = False
    hello: dict[str, Any] | None = None
    last_heartbeat: dict[str, Any] | None = None
    heartbeats: int = 0
    last_agent_status: dict[str, Any] | None = None
    agent_statuses: int = 0
    sessions: int = 0
    last_seen_at: float | None = None
    open_sessions: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        hello = self.hello or {}
        return {
            "agent_id": self.agent_id,
            "name": self.name,
            "project_id": self.project_id,
            "project_uuid": self.project_uuid,
            "online": bool(self.open_sessions),
            "open_sessions": len(self.open_sessions),
            "revoked": self.revoked,
            "hello": self.hello,
            "capabilities": hello.get("capabilities") or {},
            "engines": hello.get("engines") or [],
            "last_heartbeat": self.last_heartbeat,
            "heartbeats": self.heartbeats,
            "last_agent_status": self.last_agent_status,
            "agent_statuses": self.agent_statuses,
            "sessions": self.sessions,
            "last_seen_at": self.last_seen_at,
        }
