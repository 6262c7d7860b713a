"""``schedule.external.mutate``: native create/update/delete and trigger, confirmed by a snapshot (7.3).

The operation is journaled durably before any effect, keyed by ``operation_id`` with the digest
of the whole request: a repeat of a finished operation gets its stored receipt and no second
effect; anything else about a known id (a different request, or a crash mid-way) is refused.
The receipt names the snapshot taken right after the effect, which is what the brain confirms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..engines.base import CommandFailed, Redacted
from ..logs import get_logger
from ..protocol.schedules import (
    CAP_MUTATION,
    EDITABLE_FIELDS,
    external_digest,
    external_schedule_configuration,
    normalize_external_schedule,
)
from .handlers import is_uuid
from .model import ConflictError, NativeScheduleError, as_command_result
from .observe import resolve
from .store import StoreError
from .streams import capabilities_of

if TYPE_CHECKING:
    from .streams import AdapterState, ScheduleStreams

log = get_logger(__name__)

OPERATIONS = ("create", "update", "delete", "trigger")


class MutationRefused(Exception):
    """Refused before any effect."""


class MutationFailed(Exception):
    """Failed after the effect may have started."""


def mutate(streams: ScheduleStreams, params: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    operation = params.get("operation")
    try:
        return _mutate(streams, params, target)
    except MutationRefused as exc:
        raise CommandFailed(str(exc), {"indeterminate": False, "operation": operation}) from None
    except CommandFailed as exc:
        raise CommandFailed(str(exc), {"indeterminate": False, "operation": operation}) from None
    except Exception as exc:  # noqa: BLE001 - the effect may have landed: say so
        log.warning("schedules.mutation_failed", scheduler=str(params.get("scheduler"))[:40], operation=operation,
                    error=f"{type(exc).__name__}: {exc}"[:300])
        raise CommandFailed(str(exc) or type(exc).__name__, {"indeterminate": True, "operation": operation}) from None


def _mutate(streams: ScheduleStreams, p: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    owner = p.get("scheduler")
    if not isinstance(owner, str) or not owner or owner != target.get("scheduler") or p.get("owner") != owner:
        raise MutationRefused("native mutation scheduler does not match its target")
    if not is_uuid(p.get("operation_id")):
        raise MutationRefused("native mutation operation_id is not a UUID")
    operation = p.get("operation")
    if operation not in OPERATIONS:
        raise MutationRefused(f"native mutation operation {operation!r} is unknown")
    state = streams.state(owner)
    caps = capabilities_of(state.adapter)
    if operation == "trigger" and "trigger_now" not in caps:
        raise MutationRefused(f"{owner} cannot trigger schedules")
    if operation != "trigger" and (CAP_MUTATION not in caps or not hasattr(state.adapter, "apply_external_mutation")):
        raise MutationRefused(f"{owner} does not support native schedule writes")
    definition = p.get("definition")
    if not isinstance(definition, Mapping) or not set(definition) <= EDITABLE_FIELDS:
        raise MutationRefused("native mutation definition has fields outside the editable set")
    digest = external_digest(dict(p))
    with state.lock:
        auth = streams.current(owner)
        binding = (p.get("stream_id"), p.get("epoch_uuid"), p.get("epoch_number"), p.get("adapter_instance_id"),
                   p.get("source_scope"))
        if auth is None or binding != (auth.stream_id, auth.epoch_uuid, auth.epoch_number, auth.adapter_instance_id,
                                       auth.source_scope):
            raise MutationRefused("native mutation does not bind the current stream authority")
        try:
            stored = streams.store.claim_mutation(owner, p["operation_id"], digest)
        except StoreError as exc:
            raise MutationRefused(str(exc)) from None
        if stored is not None:
            return Redacted(stored)
        try:
            row, trigger_result = _effect(state, operation, p)
        except (MutationRefused, ConflictError, NativeScheduleError, NotImplementedError) as exc:
            streams.store.drop_claim(p["operation_id"])  # nothing happened: a retry may try again
            raise MutationRefused(str(exc) or type(exc).__name__) from None
        try:
            summary = streams.snapshot(owner, f"native-mutation:{p['operation_id']}")
        except Exception as exc:  # noqa: BLE001
            raise MutationFailed(f"native write may have committed; confirmation could not be buffered "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None
        if summary is None:
            raise MutationFailed("native write may have committed; confirmation could not be buffered "
                                 "(the stream authority ended)")
        projected = state.project(row) if row is not None else None
        receipt = {**summary, "operation_id": p["operation_id"],
                   "source_key": projected["source_key"] if projected else p.get("schedule_id"),
                   "observed_configuration": external_schedule_configuration(projected) if projected else None}
        if trigger_result is not None:
            receipt["trigger_result"] = _scrubbed(streams, trigger_result)
        streams.store.finish_mutation(p["operation_id"], receipt)
    # Redacted already: observed_configuration is the projection (args/kwargs scrubbed once, as in
    # the snapshot it must match, schedules.md 7.3); a second pass could cut it elsewhere.
    return Redacted(receipt)


def _scrubbed(streams: ScheduleStreams, value: dict[str, Any]) -> dict[str, Any]:
    return streams.redactor.scrub(value) if streams.redactor is not None else value


def _effect(state: AdapterState, operation: str, p: Mapping[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    schedule_id, expected = p.get("schedule_id"), p.get("expected")
    if operation == "create":
        if schedule_id is not None or expected is not None:
            raise MutationRefused("native create cannot name an existing schedule")
    elif not isinstance(schedule_id, str) or not schedule_id or not isinstance(expected, Mapping):
        raise MutationRefused(f"native {operation} needs schedule_id and expected")
    if operation == "trigger":
        return _trigger(state, schedule_id, expected)
    row = resolve(state.adapter.apply_external_mutation(operation=operation, schedule_id=schedule_id,
                                                        expected=expected, definition=dict(p["definition"])))
    if operation == "delete":
        return None, None
    if row is None:
        raise MutationFailed(f"native {operation} returned no schedule")
    return row, None


def _trigger(state: AdapterState, schedule_id: str, expected: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    try:
        row = resolve(state.adapter.get_schedule(schedule_id))
    except Exception as exc:  # noqa: BLE001
        raise MutationRefused(f"could not read schedule {schedule_id!r} ({type(exc).__name__}); refusing to fire "
                              "a possibly mis-identified schedule -- retry.") from None
    if row is None:
        raise MutationRefused(f"native schedule {schedule_id!r} not found")
    current = external_schedule_configuration(state.project(row))
    if current != external_schedule_configuration(normalize_external_schedule(expected, state.project.owner)):
        raise MutationRefused("native schedule changed before trigger; refresh and inspect the source")
    result = as_command_result(resolve(state.adapter.trigger_now(schedule_id)))
    if not result.succeeded:
        if (result.result or {}).get("indeterminate"):
            raise MutationFailed(result.error or "trigger outcome unknown")
        raise MutationRefused(result.error or "the scheduler refused to trigger")
    return row, result.to_json()
