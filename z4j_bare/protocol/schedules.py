"""External schedule protocol v1 (schedules.md sections 5-7): the pure part, no I/O.

Canonical JSON, digests, the 20-key row normalization, projection bodies, snapshot framing and
the events that carry them. Both peers use these functions: the agent to build what it sends,
the local brain to check it exactly like the real brain does.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from .canonical import canonical_text

PROTOCOL_VERSION = 1
RUNTIME_FEATURE = "external_schedule_protocol_v1"
CAP_STABLE_SNAPSHOT = "external_schedule_stable_snapshot_v1"
CAP_MUTATION = "external_schedule_mutation_v1"
RESERVED_OWNER = "z4j-scheduler"
FRAME_TARGET_BYTES = 786_432
ROW_PAYLOAD_LIMIT = 753_664
PERIODIC_RESYNC_SECONDS = 900.0

SNAPSHOT_EVENT = "schedule.snapshot"
CONTROL_EVENT = "schedule.updated"
PROJECTION_KINDS = ("snapshot", "created", "updated", "deleted", "control")
EDITABLE_FIELDS = frozenset({"name", "task_name", "kind", "expression", "timezone", "queue", "args", "kwargs", "is_enabled"})
SCHEDULE_KINDS = frozenset({"cron", "interval", "solar", "clocked"})
PRIORITIES = frozenset({"critical", "high", "normal", "low"})
#: Column limits the brain enforces on PostgreSQL (schedules.md 8.4); a row over them wedges a stream.
FIELD_LIMITS = {"engine": 40, "scheduler": 40, "name": 200, "task_name": 500, "queue": 200, "timezone": 64,
                "external_id": 200, "source": 64, "source_hash": 128, "source_key": 200, "expression": 200}

ROW_KEYS = ("source_key", "engine", "scheduler", "name", "task_name", "kind", "expression", "timezone", "queue",
            "priority", "args", "kwargs", "is_enabled", "last_run_at", "next_run_at", "total_runs", "external_id",
            "catch_up", "source", "source_hash")
RUN_STATE_KEYS = ("last_run_at", "next_run_at", "total_runs")
FRAME_KEYS = frozenset({"protocol_version", "stream_id", "epoch_uuid", "epoch_number", "sequence", "owner",
                        "source_scope", "adapter_instance_id", "snapshot_id", "frame_kind", "frame_index",
                        "frame_count", "row_count", "snapshot_digest", "stable_source", "schedules"})
PROJECTION_KEYS = frozenset({"protocol_version", "stream_id", "epoch_uuid", "epoch_number", "sequence", "kind",
                             "owner", "source_scope", "adapter_instance_id", "complete", "stable_source",
                             "operation_id", "schedules", "deleted_source_keys"})


class ExternalScheduleProtocolError(ValueError):
    """A value breaks the external schedule protocol; the message says which rule."""


# -- canonical JSON -------------------------------------------------------------------------------

def _closed(value: Any, path: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExternalScheduleProtocolError(f"{path} contains a non-finite number")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_closed(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in value:
            if not isinstance(key, str):
                raise ExternalScheduleProtocolError(f"{path} contains a non-string key")
        for key in sorted(value):
            out[key] = _closed(value[key], f"{path}.{key}")
        return out
    raise ExternalScheduleProtocolError(f"{path} contains unsupported {type(value).__name__}")


def closed_value(value: Any, path: str = "$") -> Any:
    """The value rebuilt from the closed JSON vocabulary (keys sorted), or a protocol error."""
    return _closed(value, path)


def canonical_external_json(value: Any) -> bytes:
    return json.dumps(_closed(value, "$"), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def external_digest(value: Any) -> str:
    return hashlib.sha256(canonical_external_json(value)).hexdigest()


def is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def source_scope(owner: str) -> str:
    _check_owner(owner)
    return canonical_external_json({"kind": "scheduler-owner", "owner": owner, "version": 1}).decode("utf-8")


def _check_owner(owner: Any) -> None:
    if not isinstance(owner, str) or not owner or owner == RESERVED_OWNER:
        raise ExternalScheduleProtocolError("external owner is missing or reserved")


# -- rows -----------------------------------------------------------------------------------------

def _timestamp(raw: Mapping[str, Any], field: str) -> str | None:
    value = raw.get(field)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ExternalScheduleProtocolError(f"{field} is not an ISO-8601 timestamp") from None
    if not isinstance(value, datetime):
        raise ExternalScheduleProtocolError(f"{field} is not an ISO-8601 timestamp")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ExternalScheduleProtocolError(f"{field} must include an offset")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def normalize_external_schedule(raw: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """The projected row: exactly the 20 keys of schedules.md 5.3, closed and key-sorted."""
    _check_owner(owner)
    if not isinstance(raw, Mapping):
        raise ExternalScheduleProtocolError("external schedule is not an object")
    if str(raw.get("scheduler") or owner) != owner:
        raise ExternalScheduleProtocolError("inner schedule owner differs from stream owner")
    name = str(raw.get("name") or "").strip()
    task_name = str(raw.get("task_name") or "").strip()
    if not name or not task_name:
        raise ExternalScheduleProtocolError("external schedule name and task_name are required")
    key = raw.get("source_key") or raw.get("external_source_key") or raw.get("external_id") or name
    key = str(key).strip()
    if not key:
        raise ExternalScheduleProtocolError("external schedule source key is required")
    args = raw.get("args", [])
    kwargs = raw.get("kwargs", {})
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, Mapping):
        raise ExternalScheduleProtocolError("external schedule args/kwargs have wrong types")
    try:
        total_runs = int(raw.get("total_runs", 0))
    except (TypeError, ValueError):
        raise ExternalScheduleProtocolError("external schedule total_runs is not an integer") from None
    if total_runs < 0:
        raise ExternalScheduleProtocolError("external schedule total_runs is negative")
    row = {
        "source_key": key,
        "engine": str(raw.get("engine") or owner.split("-", 1)[0] or owner),
        "scheduler": owner,
        "name": name,
        "task_name": task_name,
        "kind": str(raw.get("kind") or "interval"),
        "expression": str(raw.get("expression") or ""),
        "timezone": str(raw.get("timezone") or "UTC"),
        "queue": _optional_text(raw.get("queue")),
        "priority": str(raw.get("priority") or "normal"),
        "args": list(args),
        "kwargs": dict(kwargs),
        "is_enabled": bool(raw.get("is_enabled", True)),
        "last_run_at": _timestamp(raw, "last_run_at"),
        "next_run_at": _timestamp(raw, "next_run_at"),
        "total_runs": total_runs,
        "external_id": _optional_text(raw.get("external_id")),
        "catch_up": str(raw.get("catch_up") or "skip"),
        "source": str(raw.get("source") or "agent"),
        "source_hash": _optional_text(raw.get("source_hash")),
    }
    return _closed(row, "$.schedule")


def external_schedule_configuration(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row without its run state: what every compare-and-set compares."""
    return {k: v for k, v in row.items() if k not in RUN_STATE_KEYS}


def control_result_matches(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> bool:
    if set(desired) != set(observed):
        return False
    ignored = {"next_run_at"}
    if (desired.get("source") == "celery-beat:database" and desired.get("is_enabled") is False
            and observed.get("last_run_at") is None):
        ignored.add("last_run_at")  # django-celery-beat clears last_run_at when it disables a row
    return all(desired[k] == observed[k] for k in desired if k not in ignored)


def storable_problem(row: Mapping[str, Any]) -> str | None:
    """Why the brain could not store this normalized row (schedules.md 8.4), or None."""
    if row["kind"] not in SCHEDULE_KINDS:
        return f"kind {row['kind']!r} is not one of {sorted(SCHEDULE_KINDS)}"
    if row["priority"] not in PRIORITIES:
        return f"priority {row['priority']!r} is not one of {sorted(PRIORITIES)}"
    for field, limit in FIELD_LIMITS.items():
        value = row.get(field)
        if isinstance(value, str) and len(value) > limit:
            return f"{field} is longer than {limit} characters"
    if not row["expression"]:
        return "expression is empty"
    return None


# -- projections and snapshot frames --------------------------------------------------------------

def _sorted_rows(schedules: Iterable[Mapping[str, Any]], owner: str) -> list[dict[str, Any]]:
    rows = [normalize_external_schedule(row, owner) for row in schedules]
    rows.sort(key=lambda r: r["source_key"])
    for a, b in pairwise(rows):
        if a["source_key"] == b["source_key"]:
            raise ExternalScheduleProtocolError("projection repeats an external source key")
    return rows


def projection_body(*, stream_id: str, epoch_uuid: str, epoch_number: int, sequence: int, kind: str, owner: str,
                    source_scope: str, adapter_instance_id: str, complete: bool, stable_source: bool,
                    operation_id: str | None, schedules: Iterable[Mapping[str, Any]],
                    deleted_source_keys: Iterable[str] = ()) -> dict[str, Any]:
    _check_owner(owner)
    if kind not in PROJECTION_KINDS:
        raise ExternalScheduleProtocolError(f"projection kind {kind!r} is unknown")
    if not _positive_int(epoch_number) or not _positive_int(sequence):
        raise ExternalScheduleProtocolError("projection epoch_number and sequence must be positive integers")
    if not adapter_instance_id:
        raise ExternalScheduleProtocolError("projection adapter_instance_id is required")
    rows = _sorted_rows(schedules, owner)
    deleted = sorted({str(k).strip() for k in deleted_source_keys if str(k).strip()})
    if set(deleted) & {r["source_key"] for r in rows}:
        raise ExternalScheduleProtocolError("projection deletes a source key it also carries")
    body = {
        "protocol_version": PROTOCOL_VERSION, "stream_id": str(stream_id), "epoch_uuid": str(epoch_uuid),
        "epoch_number": epoch_number, "sequence": sequence, "kind": kind, "owner": owner,
        "source_scope": source_scope, "adapter_instance_id": str(adapter_instance_id), "complete": bool(complete),
        "stable_source": bool(stable_source), "operation_id": operation_id, "schedules": rows,
        "deleted_source_keys": deleted,
    }
    return _closed(body, "$")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def chunk_rows(rows: Sequence[Mapping[str, Any]], limit: int = ROW_PAYLOAD_LIMIT) -> list[list[Mapping[str, Any]]]:
    """Greedy chunks whose canonical ``{"schedules": chunk}`` stays within ``limit`` bytes."""
    chunks: list[list[Mapping[str, Any]]] = []
    chunk: list[Mapping[str, Any]] = []
    size = 0  # bytes of the rows in ``chunk`` joined by commas
    wrapper = len(b'{"schedules":[]}')
    for row in rows:
        n = len(canonical_external_json(row))
        if wrapper + n > limit:
            raise ExternalScheduleProtocolError("one external schedule row exceeds the stable snapshot frame limit")
        if chunk and wrapper + size + 1 + n > limit:
            chunks.append(chunk)
            chunk, size = [], 0
        size += n + (1 if chunk else 0)
        chunk.append(row)
    if chunk:
        chunks.append(chunk)
    return chunks


def snapshot_frames(*, authority: Mapping[str, Any], sequence: int, snapshot_id: str,
                    schedules: Iterable[Mapping[str, Any]],
                    limit: int = ROW_PAYLOAD_LIMIT) -> tuple[str, list[tuple[dict[str, Any], str]]]:
    """(snapshot_digest, [(frame body, frame digest)...]) for one complete observation.

    ``authority`` carries stream_id, epoch_uuid, epoch_number, owner, source_scope and
    adapter_instance_id.
    """
    body = projection_body(
        stream_id=authority["stream_id"], epoch_uuid=authority["epoch_uuid"], epoch_number=authority["epoch_number"],
        sequence=sequence, kind="snapshot", owner=authority["owner"], source_scope=authority["source_scope"],
        adapter_instance_id=authority["adapter_instance_id"], complete=True, stable_source=True, operation_id=None,
        schedules=schedules,
    )
    digest = external_digest(body)
    rows = body["schedules"]
    chunks = chunk_rows(rows, limit)
    frames = [_frame(authority, sequence, snapshot_id, digest, "rows", i, len(chunks), len(rows), chunk)
              for i, chunk in enumerate(chunks)]
    frames.append(_frame(authority, sequence, snapshot_id, digest, "terminal", len(chunks), len(chunks), len(rows), []))
    return digest, frames


def _frame(authority: Mapping[str, Any], sequence: int, snapshot_id: str, digest: str, kind: str, index: int,
           count: int, row_count: int, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], str]:
    body = snapshot_frame_body(
        stream_id=authority["stream_id"], epoch_uuid=authority["epoch_uuid"], epoch_number=authority["epoch_number"],
        sequence=sequence, owner=authority["owner"], source_scope=authority["source_scope"],
        adapter_instance_id=authority["adapter_instance_id"], snapshot_id=snapshot_id, frame_kind=kind,
        frame_index=index, frame_count=count, row_count=row_count, snapshot_digest=digest, stable_source=True,
        schedules=rows,
    )
    return body, external_digest(body)


def snapshot_frame_body(*, stream_id: str, epoch_uuid: str, epoch_number: int, sequence: int, owner: str,
                        source_scope: str, adapter_instance_id: str, snapshot_id: str, frame_kind: str,
                        frame_index: int, frame_count: int, row_count: int, snapshot_digest: str,
                        stable_source: bool, schedules: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One frame's 16-key body; rows are re-normalized so a peer can rebuild and compare it."""
    if frame_kind == "rows":
        if not schedules or not 0 <= frame_index < frame_count:
            raise ExternalScheduleProtocolError("rows frame must carry rows and an index below frame_count")
    elif frame_kind == "terminal":
        if schedules or frame_index != frame_count:
            raise ExternalScheduleProtocolError("terminal frame must be empty and indexed frame_count")
    else:
        raise ExternalScheduleProtocolError(f"frame_kind {frame_kind!r} is unknown")
    if not is_digest(snapshot_digest):
        raise ExternalScheduleProtocolError("snapshot_digest is not a lowercase sha256 hex digest")
    body = {
        "protocol_version": PROTOCOL_VERSION, "stream_id": str(stream_id), "epoch_uuid": str(epoch_uuid),
        "epoch_number": epoch_number, "sequence": sequence, "owner": owner, "source_scope": source_scope,
        "adapter_instance_id": str(adapter_instance_id), "snapshot_id": str(snapshot_id), "frame_kind": frame_kind,
        "frame_index": frame_index, "frame_count": frame_count, "row_count": row_count,
        "snapshot_digest": snapshot_digest, "stable_source": bool(stable_source),
        "schedules": _sorted_rows(schedules, owner),
    }
    return _closed(body, "$")


def snapshot_event(body: Mapping[str, Any], frame_digest: str, reason: str, *, event_id: str,
                   occurred_at: str) -> dict[str, Any]:
    return {"id": event_id, "kind": SNAPSHOT_EVENT, "engine": body["owner"], "task_id": "", "occurred_at": occurred_at,
            "data": {"external_snapshot_frame": dict(body), "frame_digest": frame_digest, "reason": reason}}


def control_event(body: Mapping[str, Any], *, event_id: str, occurred_at: str) -> dict[str, Any]:
    return {"id": event_id, "kind": CONTROL_EVENT, "engine": body["owner"], "task_id": "", "occurred_at": occurred_at,
            "data": {"external_projection": dict(body), "payload_digest": external_digest(body),
                     "reason": "external-control"}}


def event_text(event: Mapping[str, Any]) -> str:
    """The event as it travels inside an event_batch: canonical text, spliced into the signed frame."""
    return canonical_text(event)
