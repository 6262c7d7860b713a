"""The local brain's Schedules page: ``brain.schedules`` (the wiring of ``schedules.BrainSchedules``).

Plugs into the brain's extension points like the real brain 1.13 behaves: after each hello that
advertises schedulers (and the protocol feature) an activation command is pinned to that
session; schedule events are checked as they are stored (a gap or an incomplete snapshot
withholds the batch's ack, an unsequenced legacy schedule event gets the fatal
``scheduler_upgrade_required`` error frame); command results feed the control bookkeeping.
Operator actions (list, trigger, enable/disable, resync, native operations) are methods here.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from ..logs import get_logger
from ..protocol import FrameType
from .schedules import BrainSchedules, ScheduleApiError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .delivery import CommandDelivery
    from .dispatch import FrameDispatch
    from .lanes import BatchIngest
    from .records import CommandRecord
    from .server import BrainServer
    from .session import Session
    from .sessions import SessionHub


class DeskHost(Protocol):
    """What the Schedules page uses of its brain (``LocalBrain`` is one)."""

    hub: SessionHub
    ingest: BatchIngest
    frames: FrameDispatch
    delivery: CommandDelivery
    server: BrainServer

    def command(self, command_id: str) -> CommandRecord: ...

    def send_command(self, action: str, parameters: dict[str, Any] | None = None, *, agent_id: str | None = None,
                     target: dict[str, Any] | None = None, engine: str | None = None) -> str: ...

    def wait_until(self, ready: Callable[[], Any], timeout: float, describe: Callable[[], str]) -> Any: ...

log = get_logger(__name__)

__all__ = ["ScheduleApiError", "ScheduleDesk"]


class ScheduleDesk:
    def __init__(self, brain: DeskHost) -> None:
        self._brain = brain
        self.logic = BrainSchedules()
        brain.hub.add_open_hook(self._on_open)
        brain.hub.add_close_hook(self._on_close)
        brain.ingest.add_hook(self._on_batch)
        brain.frames.add(FrameType.COMMAND_RESULT, self._on_result)

    # -- brain-side hooks (brain loop) ----------------------------------------------------------

    async def _on_open(self, session: Session) -> None:
        for target, params in self.logic.on_hello(session.agent.project_id, session.session_id, session.hello or {}):
            cmd = self._brain.delivery.create("schedule.external.activate", params, agent_id=session.agent.agent_id,
                                              target=target, session_id=session.session_id, issued_by=None)
            log.info("brain.schedule_activation", owner=params["owner"], epoch_number=params["epoch_number"],
                     command_id=cmd.id)

    async def _on_close(self, session: Session) -> None:
        self.logic.on_session_closed(session.session_id)

    async def _on_batch(self, session: Session, frame: Any, events: list[Any]) -> bool:
        ack = True
        for event in events:
            if not isinstance(event, dict) or not str(event.get("kind", "")).startswith("schedule."):
                continue
            disposition = self.logic.ingest(session.agent.project_id, event)
            if disposition == "legacy":
                await session.send_signed(FrameType.ERROR.value, ("err_" + frame.id)[:64], {
                    "code": "scheduler_upgrade_required", "fatal": True,
                    "message": "schedule projection requires a current Boundary-D scheduler adapter"})
                ack = False
            elif disposition == "withhold":
                ack = False
            elif disposition not in ("staged", "applied", "exact_replay"):
                log.warning("brain.schedule_event_dropped", disposition=disposition, kind=event.get("kind"))
        return ack

    def _on_result(self, session: Session, frame: Any, _events_text: bytes | None) -> None:
        try:
            record = self._brain.delivery.record(frame.id)
        except KeyError:
            return
        if record.action.startswith("schedule.external."):
            self.logic.on_result(frame.id, record.action, record.parameters, str(frame.payload.get("status")))

    # -- operator actions (any thread but the brain's loop) -------------------------------------

    def list(self, project: str = "default") -> list[dict[str, Any]]:
        """Rows like ``GET /projects/{slug}/schedules`` (brain id, control_token, revision, ...)."""
        return self.logic.schedules(project)

    def get(self, name: str, project: str = "default") -> dict[str, Any]:
        for row in self.list(project):
            if row["name"] == name:
                return row
        raise KeyError(f"no schedule named {name!r} (have {[r['name'] for r in self.list(project)]})")

    def stream(self, owner: str, project: str = "default") -> Any:
        return self.logic.stream(project, owner)

    def wait_for(self, count: int, timeout: float = 15.0, project: str = "default", **match: Any) -> list[dict[str, Any]]:
        """Wait until at least ``count`` rows match ``match`` (e.g. scheduler=..., is_enabled=False)."""
        def ready() -> list[dict[str, Any]] | None:
            rows = [r for r in self.list(project) if all(r.get(k) == v for k, v in match.items())]
            return rows if len(rows) >= count else None

        def describe() -> str:
            streams = {o: (s.phase, s.accepted, s.faults[-2:]) for (p, o), s in self.logic._streams.items() if p == project}
            return (f"timed out after {timeout:g} s waiting for {count} schedules matching {match}: have "
                    f"{[(r['name'], r['is_enabled']) for r in self.list(project)]}; streams {streams}")

        return self._brain.wait_until(ready, timeout, describe)

    def trigger(self, schedule_id: str, project: str = "default") -> str:
        """``POST /schedules/{id}/trigger``: the mutate command's id."""
        return self._issue(self.logic.plan_trigger(project, schedule_id), project)

    def set_enabled(self, schedule_id: str, enabled: bool, project: str = "default") -> str | None:
        """``POST /schedules/{id}/enable|disable``: the command id, or None when already so."""
        plan = self.logic.plan_enable(project, schedule_id, enabled)
        return None if plan is None else self._issue(plan, project)

    def mutate(self, operation: str, *, schedule_id: str | None = None, scheduler: str | None = None,
               definition: dict[str, Any] | None = None, project: str = "default") -> str:
        """``POST /schedules/native-operations``: create/update/delete/trigger."""
        plan = self.logic.plan_mutation(project, schedule_id=schedule_id, operation=operation,
                                        definition=dict(definition or {}), scheduler=scheduler)
        return self._issue(plan, project)

    def resync(self, agent_id: str | None = None) -> str:
        return self._brain.send_command("schedule.resync", {}, agent_id=agent_id,
                                        target={"type": "project", "id": "default"})

    def native_status(self, command_id: str) -> str:
        """PENDING / APPLIED / UNCONFIRMED, like ``GET /schedules/native-operations/{command_id}``."""
        record = self._brain.command(command_id)
        return self.logic.mutation_status(command_id, record.status, record.result)

    def wait_applied(self, command_id: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        status = "PENDING"
        while time.monotonic() < deadline:
            status = self.native_status(command_id)
            if status != "PENDING":
                return status
            time.sleep(0.05)
        return status

    def _issue(self, plan: tuple[str, dict, dict], project: str) -> str:
        action, target, params = plan
        stream = self.logic.stream(project, target.get("scheduler") or "")
        session = stream.session_id if stream is not None else None
        live = self._brain.hub.get(session) if session else None
        if live is None:
            raise ScheduleApiError(409, "native scheduler is not connected with current source authority")
        cmd = self._brain.delivery.create(action, params, agent_id=live.agent.agent_id, target=target,
                                          session_id=session, issued_by=str(uuid.uuid4()))
        self.logic.on_dispatched(cmd.id, action, params)
        self._brain.server.call(self._brain.delivery.dispatch_pending(live.agent.agent_id), timeout=5.0)
        return cmd.id
