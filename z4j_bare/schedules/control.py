"""``schedule.external.control``: set one schedule enabled/disabled without a native CAS (7.1).

A ``failed`` answer locks the brain's stream for good (schedules.md 7.2), so every check that
can refuse runs before any effect, and the projection is flushed to the socket before the
result. The brain only sends control to owners that did not negotiate the mutation capability;
the built-in adapters all route enable/disable through mutation instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..engines.base import CommandFailed
from ..logs import get_logger
from ..protocol.schedules import (
    control_event,
    control_result_matches,
    external_digest,
    is_digest,
    normalize_external_schedule,
    projection_body,
)
from ..protocol.schedules import event_text as encode_event
from .handlers import is_uuid, positive_int
from .model import as_command_result
from .observe import iso_now, resolve
from .store import Authority, StoreError

if TYPE_CHECKING:
    from .streams import AdapterState, ScheduleStreams

log = get_logger(__name__)

CONTROL_KEYS = frozenset({
    "operation_id", "scheduler", "schedule_id", "source_key", "z4j_schedule_id", "stream_id", "epoch_uuid",
    "epoch_number", "adapter_instance_id", "expected_accepted_sequence", "expected_projection_digest",
    "desired_projection", "desired_projection_digest", "registry_owner_id", "session_generation",
})


class ControlError(Exception):
    pass


def control(streams: ScheduleStreams, params: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return _control(streams, params)
    except CommandFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - the protocol wants the type and message
        log.error("schedules.control_failed", scheduler=str(params.get("scheduler"))[:40],
                  error=f"{type(exc).__name__}: {exc}"[:300])
        raise CommandFailed(f"schedule.external.control: {type(exc).__name__}: {exc}") from None


def _control(streams: ScheduleStreams, p: Mapping[str, Any]) -> dict[str, Any]:
    if set(p) != CONTROL_KEYS:
        raise ControlError("external control fields are not the closed protocol vocabulary")
    owner = p["scheduler"]
    if not isinstance(owner, str) or not owner:
        raise ControlError("external control names no scheduler")
    if not all(is_uuid(p[k]) for k in ("operation_id", "stream_id", "epoch_uuid", "z4j_schedule_id",
                                       "registry_owner_id")):
        raise ControlError("external control identifiers are not UUIDs")
    source_key = p["source_key"]
    if not isinstance(source_key, str) or not source_key or p["schedule_id"] != source_key:
        raise ControlError("external control schedule_id must equal its source_key")
    if not positive_int(p["epoch_number"]) or not positive_int(p["expected_accepted_sequence"], 0):
        raise ControlError("external control epoch_number/expected_accepted_sequence are not valid integers")
    state = streams.state(owner)
    desired = normalize_external_schedule(p["desired_projection"], owner)
    if desired["source_key"] != source_key or external_digest(desired) != p["desired_projection_digest"]:
        raise ControlError("external control desired projection does not match its digest or source key")
    if not is_digest(p["expected_projection_digest"]):
        raise ControlError("external control expected_projection_digest is not a sha256 hex digest")
    auth = streams.current(owner)
    if auth is None:
        raise ControlError(f"external control does not bind the current stream authority: {owner} holds none "
                           "(the session that granted it has ended, or no activation reached this session)")
    if (auth.stream_id, auth.epoch_uuid, auth.epoch_number, auth.adapter_instance_id) != (
            p["stream_id"], p["epoch_uuid"], p["epoch_number"], p["adapter_instance_id"]):
        raise ControlError(f"external control does not bind the current stream authority: it names epoch "
                           f"{p['epoch_number']}, {owner} holds epoch {auth.epoch_number}")
    expected = p["expected_accepted_sequence"]
    identity = external_digest({k: p[k] for k in sorted(CONTROL_KEYS)})
    with state.lock:
        try:
            status = streams.store.reserve_control(auth, p["operation_id"], identity, expected)
        except StoreError as exc:
            raise ControlError(str(exc)) from None
        if status == "published":
            return {"operation_id": p["operation_id"], "sequence": expected + 1, "projection_buffered": True,
                    "deduplicated": True}
        try:
            observed = _apply(state, source_key, desired, p["expected_projection_digest"])
        except Exception:
            streams.store.release_control(p["operation_id"])
            raise
        _publish(streams, auth, p["operation_id"], expected, observed)
    return {"operation_id": p["operation_id"], "sequence": expected + 1, "projection_buffered": True,
            "deduplicated": False}


def _observe_one(state: AdapterState, source_key: str) -> dict[str, Any]:
    schedule = resolve(state.adapter.get_schedule(source_key))
    if schedule is None:
        raise ControlError("external control result schedule is missing")
    return state.project(schedule)


def _apply(state: AdapterState, source_key: str, desired: dict[str, Any], expected_digest: str) -> dict[str, Any]:
    prior = _observe_one(state, source_key)
    if external_digest(prior) == expected_digest:
        method = state.adapter.enable_schedule if desired["is_enabled"] else state.adapter.disable_schedule
        result = as_command_result(resolve(method(source_key)))
        if not result.succeeded:
            raise ControlError(result.error or "the scheduler refused the change")
        observed = _observe_one(state, source_key)
    elif control_result_matches(desired, prior):
        observed = prior  # an earlier attempt already landed
    else:
        raise ControlError("external control prior source projection is stale")
    if not control_result_matches(desired, observed):
        raise ControlError("external control result does not match the desired projection")
    return observed


def _publish(streams: ScheduleStreams, auth: Authority, operation_id: str, expected: int,
             observed: dict[str, Any]) -> None:
    body = projection_body(
        stream_id=auth.stream_id, epoch_uuid=auth.epoch_uuid, epoch_number=auth.epoch_number, sequence=expected + 1,
        kind="control", owner=auth.owner, source_scope=auth.source_scope, adapter_instance_id=auth.adapter_instance_id,
        complete=False, stable_source=True, operation_id=operation_id, schedules=[observed],
    )
    text = encode_event(control_event(body, event_id=str(uuid.uuid4()), occurred_at=iso_now()))
    try:
        frames = streams.store.publish_control(auth, operation_id, expected, text)
    except StoreError as exc:
        raise ControlError(str(exc)) from None
    streams.send(auth, frames)
