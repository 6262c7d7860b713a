"""The local brain's schedule side: activation, snapshot ingest, control, mutation (schedules.md 4, 6-8).

Pure logic with its own lock; the brain's session code calls ``on_hello`` after the hello_ack,
``on_session_closed`` when a session ends, ``ingest(event)`` for each schedule event and
``on_result`` for results of the commands it planned. Checks follow the real brain 1.13:
digests rebuilt from the fields, strictly next sequences, gaps withhold the ack, a protocol
fault or a failed control marks the stream AMBIGUOUS for good, rows the brain cannot store are
dropped with the sequence never accepted.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..protocol.schedules import (
    CAP_MUTATION,
    CAP_STABLE_SNAPSHOT,
    FRAME_KEYS,
    PROJECTION_KEYS,
    RESERVED_OWNER,
    RUNTIME_FEATURE,
    ExternalScheduleProtocolError,
    control_result_matches,
    external_digest,
    external_schedule_configuration,
    projection_body,
    snapshot_frame_body,
    source_scope,
    storable_problem,
)

NEGOTIABLE = frozenset({CAP_MUTATION, "trigger_now", "create", "update", "delete", "enable", "disable", "list", "read"})
LEGACY_KINDS = frozenset({"schedule.snapshot", "schedule.created", "schedule.updated", "schedule.deleted"})


class ScheduleApiError(Exception):
    """What the brain's HTTP API would answer with a 4xx: ``status`` and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Stream:
    owner: str
    project: str
    stream_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    phase: str = "NEW"
    epoch_uuid: str = ""
    epoch_number: int = 0
    adapter_instance_id: str = ""
    session_id: str | None = None
    caps: list[str] = field(default_factory=list)
    accepted: int = 0
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # source_key -> stored row
    staged: dict[int, dict[int, tuple[str, str, dict[str, Any]]]] = field(default_factory=dict)
    applied: dict[int, tuple[str, str, str | None]] = field(default_factory=dict)  # seq -> (kind, digest, op)
    snapshots: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # seq -> rows (for confirmations)
    faults: list[str] = field(default_factory=list)


@dataclass
class ControlOp:
    id: str
    stream: Stream
    schedule_id: str
    source_key: str
    expected: int
    desired: dict[str, Any]
    prior: dict[str, Any]
    control_token: str
    status: str = "PENDING"
    command_id: str | None = None


class BrainSchedules:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._streams: dict[tuple[str, str], Stream] = {}
        self._epochs = 0
        self._controls: dict[str, ControlOp] = {}
        self._mutations: dict[str, dict[str, Any]] = {}  # command id -> parameters
        self.fatal_legacy = 0

    # -- sessions -------------------------------------------------------------------------------

    def on_hello(self, project: str, session_id: str, hello: Mapping[str, Any]) -> list[tuple[dict, dict]]:
        """The activation commands (target, parameters) for a new session, in owner order."""
        features = hello.get("runtime_features") or []
        if RUNTIME_FEATURE not in features:
            return []
        caps = hello.get("capabilities") if isinstance(hello.get("capabilities"), Mapping) else {}
        out = []
        with self._lock:
            for owner in sorted(set(hello.get("schedulers") or [])):
                owner_caps = caps.get(owner) or []
                if owner == RESERVED_OWNER or CAP_STABLE_SNAPSHOT not in owner_caps:
                    continue
                stream = self._streams.setdefault((project, owner), Stream(owner, project))
                if stream.phase == "AMBIGUOUS":
                    continue  # no in-band recovery
                if stream.session_id not in (None, session_id) and stream.phase in ("ACTIVATING", "ACTIVE"):
                    continue  # one executor per owner per project
                self._epochs += 1
                stream.phase, stream.session_id = "ACTIVATING", session_id
                stream.epoch_uuid, stream.epoch_number = str(uuid.uuid4()), self._epochs
                stream.adapter_instance_id = str(uuid.uuid4())
                stream.caps = sorted(set(owner_caps) & NEGOTIABLE)
                stream.accepted, stream.staged, stream.applied, stream.snapshots = 0, {}, {}, {}  # per epoch
                target = {"type": "scheduler", "id": owner, "scheduler": owner}
                out.append((target, {
                    "scheduler": owner, "owner": owner, "source_scope": source_scope(owner),
                    "stream_id": stream.stream_id, "epoch_uuid": stream.epoch_uuid,
                    "epoch_number": stream.epoch_number, "adapter_instance_id": stream.adapter_instance_id,
                    "stable_source": True, "registry_owner_id": str(uuid.uuid5(uuid.NAMESPACE_URL, session_id)),
                    "session_generation": session_id,
                }))
        return out

    def on_session_closed(self, session_id: str) -> None:
        with self._lock:
            for stream in self._streams.values():
                if stream.session_id == session_id and stream.phase in ("ACTIVATING", "ACTIVE"):
                    stream.phase = "FENCED"
            for op in self._controls.values():
                if op.status == "CLAIMED" and op.stream.session_id == session_id:
                    self._ambiguous(op.stream, "session lost while a control was claimed", op)

    # -- ingest ---------------------------------------------------------------------------------

    def ingest(self, project: str, event: Mapping[str, Any]) -> str:
        """Disposition of one schedule event: 'ignored' for a non-schedule event, 'legacy' for an
        unsequenced schedule event (fatal for the session), 'withhold' when the ack must be
        withheld, anything else is acked."""
        data = event.get("data") if isinstance(event.get("data"), Mapping) else {}
        frame, projection = data.get("external_snapshot_frame"), data.get("external_projection")
        if frame is not None and projection is not None:
            return "dropped:both_frames"
        if frame is not None:
            with self._lock:
                return self._stage(project, event, data)
        if projection is not None:
            with self._lock:
                return self._project(project, event, data)
        if event.get("kind") in LEGACY_KINDS:
            self.fatal_legacy += 1
            return "legacy"
        return "ignored"

    def _stage(self, project: str, event: Mapping[str, Any], data: Mapping[str, Any]) -> str:
        body = data["external_snapshot_frame"]
        if not isinstance(body, Mapping) or not isinstance(data.get("frame_digest"), str):
            return "dropped:malformed"
        if set(body) != FRAME_KEYS or body.get("protocol_version") != 1 or event.get("kind") != "schedule.snapshot" \
                or body.get("owner") != event.get("engine"):
            return "dropped:malformed"
        try:
            rebuilt = snapshot_frame_body(**{k: body[k] for k in FRAME_KEYS if k != "protocol_version"})
        except (ExternalScheduleProtocolError, TypeError, KeyError):
            return "dropped:malformed"
        if external_digest(rebuilt) != data["frame_digest"]:
            return "dropped:digest_mismatch"
        stream = self._stream_for(project, body)
        if isinstance(stream, str):
            return stream
        seq = body["sequence"]
        if seq <= stream.accepted:
            done = stream.applied.get(seq)
            if done is not None and done[0] == "snapshot" and done[1] == body["snapshot_digest"]:
                return "exact_replay"
            return self._fault(stream, f"sequence {seq} replays an accepted sequence with other content")
        if seq > stream.accepted + 1:
            return "withhold"  # sequence_gap
        staged = stream.staged.setdefault(seq, {})
        for kind, digest, other in staged.values():
            if any(other[k] != body[k] for k in ("snapshot_id", "frame_count", "row_count", "snapshot_digest",
                                                  "adapter_instance_id", "stable_source")):
                return self._fault(stream, "frames of one sequence disagree")
        index = body["frame_index"]
        if index in staged and (staged[index][0] != body["frame_kind"] or staged[index][1] != data["frame_digest"]):
            return self._fault(stream, "one frame index arrived twice with different content")
        staged[index] = (body["frame_kind"], data["frame_digest"], rebuilt)
        if body["frame_kind"] != "terminal":
            return "staged"
        count = body["frame_count"]
        if set(staged) != set(range(count + 1)):
            return "withhold"  # snapshot_incomplete
        rows = [row for i in range(count) for row in staged[i][2]["schedules"]]
        if len(rows) != body["row_count"]:
            return self._fault(stream, "assembled rows differ from row_count")
        whole = projection_body(stream_id=stream.stream_id, epoch_uuid=stream.epoch_uuid,
                                epoch_number=stream.epoch_number, sequence=seq, kind="snapshot", owner=stream.owner,
                                source_scope=body["source_scope"], adapter_instance_id=stream.adapter_instance_id,
                                complete=True, stable_source=body["stable_source"], operation_id=None, schedules=rows)
        if external_digest(whole) != body["snapshot_digest"]:
            return self._fault(stream, "snapshot digest mismatch")
        return self._apply(stream, seq, "snapshot", body["snapshot_digest"], whole["schedules"], None)

    def _stream_for(self, project: str, body: Mapping[str, Any]) -> Stream | str:
        stream = self._streams.get((project, body.get("owner")))
        if stream is None or stream.stream_id != body.get("stream_id"):
            return "dropped:unknown_stream"
        if (stream.epoch_uuid, stream.epoch_number, stream.adapter_instance_id) != (
                body.get("epoch_uuid"), body.get("epoch_number"), body.get("adapter_instance_id")) \
                or body.get("source_scope") != source_scope(stream.owner):
            return "dropped:stale_epoch"
        if stream.phase not in ("ACTIVATING", "ACTIVE"):
            return f"dropped:{stream.phase.lower()}"
        return stream

    def _project(self, project: str, event: Mapping[str, Any], data: Mapping[str, Any]) -> str:
        body = data["external_projection"]
        if not isinstance(body, Mapping) or set(body) != PROJECTION_KEYS or body.get("protocol_version") != 1 \
                or body.get("owner") != event.get("engine") or body.get("kind") != "control" \
                or event.get("kind") != "schedule.updated" or not body.get("operation_id"):
            return "dropped:malformed"
        try:
            rebuilt = projection_body(**{k: body[k] for k in PROJECTION_KEYS if k != "protocol_version"})
        except (ExternalScheduleProtocolError, TypeError, KeyError):
            return "dropped:malformed"
        if external_digest(rebuilt) != data.get("payload_digest"):
            return "dropped:digest_mismatch"
        stream = self._stream_for(project, body)
        if isinstance(stream, str):
            return stream
        seq = body["sequence"]
        if seq <= stream.accepted:
            done = stream.applied.get(seq)
            if done == ("control", data["payload_digest"], body["operation_id"]):
                return "exact_replay"
            return self._fault(stream, "control replays an accepted sequence with other content")
        if seq > stream.accepted + 1:
            return "withhold"
        op = self._controls.get(body["operation_id"])
        rows = rebuilt["schedules"]
        if (op is None or op.status != "CLAIMED" or op.expected != stream.accepted or len(rows) != 1
                or rows[0]["source_key"] != op.source_key or not control_result_matches(op.desired, rows[0])
                or self._row_projection(stream.rows.get(op.source_key)) != op.prior
                or stream.rows[op.source_key]["control_token"] != op.control_token):
            return self._ambiguous(stream, "control projection does not match its planned operation", op)
        result = self._apply(stream, seq, "control", data["payload_digest"], rows, body["operation_id"])
        if result == "applied":
            op.status = "APPLIED"
        return result

    def _apply(self, stream: Stream, seq: int, kind: str, digest: str, rows: list[dict[str, Any]],
               operation_id: str | None) -> str:
        names = [r["name"] for r in rows]
        problems = [storable_problem(r) for r in rows]
        if any(problems) or len(set(names)) != len(names):
            stream.faults.append(f"sequence {seq} could not be stored: {[p for p in problems if p] or 'duplicate name'}")
            return "dropped:apply_failed"  # the sequence is never accepted: the stream is wedged
        if stream.phase == "ACTIVATING" and (seq != 1 or kind != "snapshot"):
            return "dropped:activation_snapshot_required"
        incoming = {r["source_key"]: r for r in rows}
        if kind == "snapshot":
            for key in set(stream.rows) - set(incoming):
                del stream.rows[key]
        for key, row in incoming.items():
            old = stream.rows.get(key)
            changed = old is None or self._row_projection(old) != row
            token = str(uuid.uuid4()) if (changed or operation_id or stream.phase == "ACTIVATING") else old["control_token"]
            stream.rows[key] = {**row, "id": old["id"] if old else str(uuid.uuid4()), "control_token": token,
                                "schedule_revision": (old["schedule_revision"] + (1 if changed else 0)) if old else 1}
        stream.accepted = seq
        stream.phase = "ACTIVE"
        stream.applied[seq] = (kind, digest, operation_id)
        if kind == "snapshot":
            stream.snapshots[seq] = rows
            stream.staged.pop(seq, None)
        return "applied"

    @staticmethod
    def _row_projection(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        return {k: v for k, v in row.items() if k not in ("id", "control_token", "schedule_revision")}

    def _fault(self, stream: Stream, why: str) -> str:
        stream.phase = "AMBIGUOUS"
        stream.faults.append(why)
        return "fault"

    def _ambiguous(self, stream: Stream, why: str, op: ControlOp | None) -> str:
        if op is not None:
            op.status = "AMBIGUOUS"
        return self._fault(stream, why)

    # -- operator actions (the HTTP API of schedules.md 12) ------------------------------------

    def schedules(self, project: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = [dict(r) for (p, _), s in self._streams.items() if p == project for r in s.rows.values()]
        return sorted(rows, key=lambda r: (r["name"], r["id"]))

    def stream(self, project: str, owner: str) -> Stream | None:
        with self._lock:
            return self._streams.get((project, owner))

    def _find(self, project: str, schedule_id: str) -> tuple[Stream, dict[str, Any]]:
        for (p, _), stream in self._streams.items():
            if p != project:
                continue
            for row in stream.rows.values():
                if row["id"] == schedule_id:
                    return stream, row
        raise ScheduleApiError(404, "schedule not found")

    def plan_trigger(self, project: str, schedule_id: str) -> tuple[str, dict, dict]:
        return self.plan_mutation(project, schedule_id=schedule_id, operation="trigger", definition={})

    def plan_enable(self, project: str, schedule_id: str, enabled: bool) -> tuple[str, dict, dict] | None:
        """(action, target, parameters) to send, or None when the row is already in that state."""
        with self._lock:
            stream, row = self._find(project, schedule_id)
            if row["source"] == "celery-beat:static":
                raise ScheduleApiError(409, "static Beat schedules are read-only; edit application configuration")
            if row["is_enabled"] is enabled:
                return None
            if CAP_MUTATION in stream.caps:
                return self.plan_mutation(project, schedule_id=schedule_id, operation="update",
                                          definition={"is_enabled": enabled})
            return self._plan_control(stream, row, enabled)

    def _plan_control(self, stream: Stream, row: dict[str, Any], enabled: bool) -> tuple[str, dict, dict]:
        if stream.phase != "ACTIVE":
            raise ScheduleApiError(409, "stream_not_executable")
        if any(op.stream is stream and op.status in ("PENDING", "CLAIMED", "AMBIGUOUS") for op in self._controls.values()):
            raise ScheduleApiError(409, "an opposite external schedule control is already in flight")
        prior = self._row_projection(row)
        desired = {**prior, "is_enabled": enabled}
        op = ControlOp(str(uuid.uuid4()), stream, row["id"], row["source_key"], stream.accepted, desired, prior,
                       row["control_token"])
        self._controls[op.id] = op
        params = {
            "operation_id": op.id, "scheduler": stream.owner, "schedule_id": row["source_key"],
            "source_key": row["source_key"], "z4j_schedule_id": row["id"], "stream_id": stream.stream_id,
            "epoch_uuid": stream.epoch_uuid, "epoch_number": stream.epoch_number,
            "adapter_instance_id": stream.adapter_instance_id, "expected_accepted_sequence": stream.accepted,
            "expected_projection_digest": external_digest(prior), "desired_projection": desired,
            "desired_projection_digest": external_digest(desired),
            "registry_owner_id": str(uuid.uuid5(uuid.NAMESPACE_URL, stream.session_id or "")),
            "session_generation": stream.session_id,
        }
        return "schedule.external.control", {"type": "schedule", "id": row["id"], "scheduler": stream.owner}, params

    def plan_mutation(self, project: str, *, schedule_id: str | None, operation: str, definition: dict[str, Any],
                      scheduler: str | None = None) -> tuple[str, dict, dict]:
        with self._lock:
            if schedule_id is not None:
                stream, row = self._find(project, schedule_id)
            else:
                stream, row = self._streams.get((project, scheduler or "")), None
                if stream is None:
                    raise ScheduleApiError(409, "native scheduler is not connected with current source authority")
            if stream.phase != "ACTIVE":
                raise ScheduleApiError(409, "native scheduler is not connected with current source authority")
            if row is not None and row["source"] == "celery-beat:static" and operation != "trigger":
                raise ScheduleApiError(409, "static Beat schedules are read-only; edit application configuration")
            needed = "trigger_now" if operation == "trigger" else CAP_MUTATION
            cap = {"trigger": "trigger_now"}.get(operation, operation)
            if operation == "update" and set(definition) == {"is_enabled"}:
                cap = "enable" if definition["is_enabled"] else "disable"
            if needed not in stream.caps:
                raise ScheduleApiError(409, "the connected scheduler does not support atomic native writes")
            if cap not in stream.caps:
                raise ScheduleApiError(409, "the connected native scheduler does not support this operation")
            operation_id = str(uuid.uuid4())
            params = {
                "intent": {"scheduler": stream.owner, "operation": operation, "schedule_id": schedule_id,
                           "definition": definition,
                           "observed_control_token": row["control_token"] if row else None},
                "operation_id": operation_id, "scheduler": stream.owner, "owner": stream.owner,
                "operation": operation, "schedule_id": row["source_key"] if row else None, "definition": definition,
                "expected": self._row_projection(row), "stream_id": stream.stream_id,
                "epoch_uuid": stream.epoch_uuid, "epoch_number": stream.epoch_number,
                "source_scope": source_scope(stream.owner), "adapter_instance_id": stream.adapter_instance_id,
                "stable_source": True,
                "registry_owner_id": str(uuid.uuid5(uuid.NAMESPACE_URL, stream.session_id or "")),
                "session_generation": stream.session_id, "expected_accepted_sequence": stream.accepted,
            }
            return ("schedule.external.mutate", {"type": "scheduler", "id": stream.owner, "scheduler": stream.owner},
                    params)

    # -- command bookkeeping --------------------------------------------------------------------

    def on_dispatched(self, command_id: str, action: str, params: Mapping[str, Any]) -> None:
        with self._lock:
            if action == "schedule.external.control":
                op = self._controls.get(str(params.get("operation_id")))
                if op is not None:
                    op.status, op.command_id = "CLAIMED", command_id
            elif action == "schedule.external.mutate":
                self._mutations[command_id] = dict(params)

    def on_result(self, command_id: str, action: str, params: Mapping[str, Any], status: str) -> None:
        if action != "schedule.external.control" or status == "success":
            return
        with self._lock:
            op = self._controls.get(str(params.get("operation_id")))
            if op is not None and op.status == "CLAIMED":
                self._ambiguous(op.stream, "the agent answered a claimed control with failed", op)

    def control_status(self, operation_id: str) -> str:
        with self._lock:
            return self._controls[operation_id].status

    def mutation_status(self, command_id: str, command_status: str, receipt: Mapping[str, Any] | None) -> str:
        """PENDING / APPLIED / UNCONFIRMED like GET /schedules/native-operations/{command_id}."""
        with self._lock:
            payload = self._mutations.get(command_id)
            if payload is None:
                raise ScheduleApiError(404, "native schedule operation not found")
            if command_status in ("failed", "timeout"):
                return "UNCONFIRMED"
            if command_status != "completed" or not receipt or not receipt.get("sequence"):
                return "PENDING"
            stream = self._streams.get((self._project_of(payload), payload["owner"]))
            if (stream is None or receipt.get("operation_id") != payload["operation_id"]
                    or receipt.get("stream_id") != payload["stream_id"] or receipt.get("epoch_uuid") != payload["epoch_uuid"]
                    or receipt.get("epoch_number") != payload["epoch_number"]
                    or receipt["sequence"] <= payload["expected_accepted_sequence"]
                    or (payload["operation"] != "create" and receipt.get("source_key") != payload["schedule_id"])):
                return "UNCONFIRMED"
            rows = stream.snapshots.get(receipt["sequence"])
            if rows is None or stream.epoch_uuid != payload["epoch_uuid"]:
                return "PENDING"
            observed = next((r for r in rows if r["source_key"] == receipt.get("source_key")), None)
            if payload["operation"] == "delete":
                return "APPLIED" if observed is None else "UNCONFIRMED"
            if observed is None or external_schedule_configuration(observed) != receipt.get("observed_configuration"):
                return "UNCONFIRMED"
            if any(observed.get(k) != v for k, v in payload["definition"].items() if k != "expression"):
                return "UNCONFIRMED"
            if payload["operation"] == "trigger" and (receipt.get("trigger_result") or {}).get("status") != "success":
                return "UNCONFIRMED"
            return "APPLIED"

    def _project_of(self, payload: Mapping[str, Any]) -> str:
        for (project, owner), stream in self._streams.items():
            if stream.stream_id == payload["stream_id"]:
                return project
        return ""
