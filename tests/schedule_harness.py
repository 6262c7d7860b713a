"""Frame-level harness: the agent's ScheduleChannel against the local brain's schedule logic.

No sockets: the channel is wired to a real ``ControlFrames`` (the runtime's control path) as the
runtime wires it; ``pump`` hands the event_batch frames it sends to the brain side, which answers
with acks (or withholds them) exactly as it does behind the WebSocket. Used by the channel tests;
the adapters and the runtime are tested for real elsewhere.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from z4j_bare.buffer import BufferStore
from z4j_bare.controls import ControlFrames
from z4j_bare.engines.base import CommandFailed
from z4j_bare.schedules.channel import ScheduleChannel
from z4j_bare.schedules.model import CommandResult, Schedule, SchedulerAdapter
from z4j_bare.schedules.store import ScheduleStore
from z4j_bare.testing.schedules import BrainSchedules

PROJECT = "default"


class MemoryAdapter(SchedulerAdapter):
    """A scheduler kept in a dict: enable/disable/trigger, no native CAS (so the brain uses control)."""

    name = "bars-memory"

    def __init__(self, name: str = "bars-memory", caps: set[str] | None = None) -> None:
        self.name = name  # type: ignore[misc]
        self.rows: dict[str, Schedule] = {}
        self.caps = caps or {"list", "enable", "disable", "trigger_now", "external_schedule_stable_snapshot_v1"}
        self.triggered: list[str] = []
        self.fail_list = False
        self.sink = None

    def add(self, key: str, **fields: Any) -> Schedule:
        base = {"engine": "celery", "scheduler": self.name, "name": key, "task_name": "bars.sched.report",
                "kind": "cron", "expression": "0 3 * * *", "external_id": key, "source": "bars-memory:test"}
        base.update(fields)
        self.rows[key] = Schedule(**base)
        return self.rows[key]

    def capabilities(self) -> set[str]:
        return set(self.caps)

    def list_schedules(self) -> list[Schedule]:
        if self.fail_list:
            raise ConnectionError("scheduler store unreachable")
        return list(self.rows.values())

    def get_schedule(self, schedule_id: str) -> Schedule | None:
        return self.rows.get(schedule_id)

    def _toggle(self, schedule_id: str, on: bool) -> CommandResult:
        row = self.rows.get(schedule_id)
        if row is None:
            return CommandResult.failed(f"schedule {schedule_id!r} not found")
        row.is_enabled = on
        return CommandResult.ok(schedule_id=schedule_id)

    def enable_schedule(self, schedule_id: str) -> CommandResult:
        return self._toggle(schedule_id, True)

    def disable_schedule(self, schedule_id: str) -> CommandResult:
        return self._toggle(schedule_id, False)

    def trigger_now(self, schedule_id: str) -> CommandResult:
        if schedule_id not in self.rows:
            return CommandResult.failed(f"schedule {schedule_id!r} not found")
        self.triggered.append(schedule_id)
        return CommandResult.ok(schedule_id=schedule_id, task_name=self.rows[schedule_id].task_name)

    def connect_signals(self, sink) -> None:
        self.sink = sink


@dataclass(frozen=True)
class FakeSession:
    """What a channel reads of the runtime's SessionInfo."""

    session_id: str
    max_frame: int


@dataclass
class Link:
    """One agent channel talking to one brain-side schedule registry over a fake session."""

    channel: ScheduleChannel
    brain: BrainSchedules
    controls: ControlFrames
    session_id: str = ""
    dispositions: list[str] = field(default_factory=list)
    withheld: list[str] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, tuple[str, Any, str | None]] = field(default_factory=dict)
    fatal: int = 0

    def open_session(self, max_frame: int = 1_048_576) -> list[tuple[str, Any, str | None]]:
        self.session_id = str(uuid.uuid4())
        self.controls.reset()
        self.channel.session_changed(FakeSession(self.session_id, max_frame))
        out = []
        hello = self.channel.hello_fields()
        for target, params in self.brain.on_hello(PROJECT, self.session_id, hello):
            out.append(self.command("schedule.external.activate", params, target))
        return out

    def close_session(self) -> None:
        self.brain.on_session_closed(self.session_id)
        self.channel.session_changed(None)

    def command(self, action: str, params: dict, target: dict) -> tuple[str, Any, str | None]:
        command_id = str(uuid.uuid4())
        self.brain.on_dispatched(command_id, action, params)
        try:
            outcome = ("success", self.channel.execute(action, params, target), None)
        except CommandFailed as exc:
            outcome = ("failed", exc.result, str(exc))
        self.pump()
        self.brain.on_result(command_id, action, params, outcome[0])
        self.results[command_id] = outcome
        self.last_command_id = command_id
        return outcome

    def pump(self) -> int:
        """Send what the control path has queued to the brain side; settle what it acks."""
        sent = []
        self.controls.pump(sent.append)
        for frame in sent:
            assert frame.type == "event_batch" and frame.events is not None
            batch = {"id": frame.id, "events": [json.loads(t) for t in frame.events]}
            self.batches.append(batch)
            withhold = False
            for event in batch["events"]:
                disposition = self.brain.ingest(PROJECT, event)
                self.dispositions.append(disposition)
                if disposition == "legacy":
                    self.fatal += 1
                    withhold = True
                withhold = withhold or disposition == "withhold"
            if withhold:
                self.withheld.append(batch["id"])
            else:
                self.controls.settle(frame.key)
        return len(sent)

    def stream(self, owner: str):
        return self.brain.stream(PROJECT, owner)

    def rows(self) -> list[dict[str, Any]]:
        return self.brain.schedules(PROJECT)

    def row(self, name: str) -> dict[str, Any]:
        return next(r for r in self.rows() if r["name"] == name)


def make_link(tmp_path, adapters, brain: BrainSchedules | None = None, redactor=None, store_name="s.sqlite",
              clock=None, **channel_options: Any) -> Link:
    store = ScheduleStore(tmp_path / store_name)
    channel = ScheduleChannel(adapters, store, redactor, **channel_options)
    controls = ControlFrames(BufferStore(tmp_path / f"buffer-{uuid.uuid4().hex[:8]}.sqlite"),
                             **({"clock": clock} if clock is not None else {}))
    channel.emit = controls.emit
    channel.start()
    return Link(channel, brain or BrainSchedules(), controls)
