"""Agents: minting tokens and keys, bearer authentication, and what the brain learns from each agent."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..logs import get_logger
from ..protocol import Frame, derive_project_secret, encode_hmac_secret, token_digest
from .changes import Changes
from .records import AgentCredentials, AgentRow

if TYPE_CHECKING:
    from .session import Session

log = get_logger(__name__)


class AgentRegistry:
    """Agents by id and by token digest (the brain keeps only ``HMAC(master, token)``)."""

    def __init__(self, changes: Changes, master_secret: str) -> None:
        self._changes = changes
        self._master = master_secret
        self._projects: dict[str, str] = {}
        self._agents: dict[str, AgentRow] = {}
        self._by_digest: dict[str, AgentRow] = {}

    def mint(self, name: str, project: str, brain_url: str) -> AgentCredentials:
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise ValueError("mint_agent(name=...) must be a string of 1..64 characters")
        if not isinstance(project, str) or not 1 <= len(project) <= 63:
            raise ValueError("mint_agent(project=...) must be a project slug of 1..63 characters")
        with self._changes.lock:
            project_uuid = self._projects.setdefault(project, str(uuid.uuid4()))
            key = derive_project_secret(self._master, project_uuid)
            token = secrets.token_urlsafe(32)
            row = AgentRow(
                agent_id=str(uuid.uuid4()), name=name, project_id=project, project_uuid=project_uuid,
                token_digest=token_digest(self._master, token), key=key,
            )
            self._agents[row.agent_id] = row
            self._by_digest[row.token_digest] = row
        log.info("brain.agent_minted", agent_id=row.agent_id, name=name, project=project)
        return AgentCredentials(
            brain_url=brain_url, token=token, hmac_secret=encode_hmac_secret(key), project_id=project,
            agent_id=row.agent_id, project_uuid=project_uuid, name=name,
        )

    def revoke(self, agent_id: str) -> None:
        with self._changes.lock:
            self.get(agent_id).revoked = True
            self._changes.bump()

    def get(self, agent_id: str) -> AgentRow:
        row = self._agents.get(agent_id)
        if row is None:
            raise ValueError(f"unknown agent_id {agent_id!r}: use an id returned by mint_agent()")
        return row

    def rows(self) -> list[AgentRow]:
        with self._changes.lock:
            return list(self._agents.values())

    def resolve(self, agent_id: str | None) -> AgentRow:
        """The agent a command without ``agent_id`` is meant for: the only one, or the only one online."""
        if agent_id is not None:
            return self.get(agent_id)
        usable = [a for a in self._agents.values() if not a.revoked]
        if len(usable) == 1:
            return usable[0]
        online = [a for a in usable if a.open_sessions]
        if len(online) == 1:
            return online[0]
        raise ValueError(
            f"send_command: {len(usable)} agents exist ({len(online)} online); pass agent_id= to choose one"
        )

    def authenticate(self, header: str | None) -> AgentRow | None:
        """The agent an ``Authorization: Bearer <token>`` header names, or None (unknown, malformed, revoked)."""
        if not header:
            return None
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        with self._changes.lock:
            row = self._by_digest.get(token_digest(self._master, token))
        return None if row is None or row.revoked else row

    def note_hello(self, agent: AgentRow, hello: dict[str, Any]) -> None:
        with self._changes.lock:
            agent.hello = hello
            agent.last_seen_at = time.time()
            self._changes.bump()

    # Frame handlers (see dispatch.FrameDispatch): the latest payload and a count per agent.

    def on_heartbeat(self, session: Session, frame: Frame, _events_text: bytes | None) -> None:
        with self._changes.lock:
            session.agent.last_heartbeat = frame.payload
            session.agent.heartbeats += 1
            self._changes.bump()

    def on_agent_status(self, session: Session, frame: Frame, _events_text: bytes | None) -> None:
        with self._changes.lock:
            session.agent.last_agent_status = frame.payload
            session.agent.agent_statuses += 1
            self._changes.bump()
