"""The ``schedule.*`` commands: activation, resync and the legacy per-schedule actions.

Control and mutation have their own modules; ``channel.ScheduleChannel.execute`` picks the
handler. Every handler returns the result dict or raises ``CommandFailed``; the command channel
turns that into ``command_result``. A handler that buffers frames returns once they are handed
to the runtime's control path: the result is queued behind them, so it never overtakes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..engines.base import CommandFailed
from ..logs import get_logger
from ..protocol.schedules import ExternalScheduleProtocolError
from ..protocol.schedules import source_scope as scope_of
from .model import as_command_result
from .observe import resolve
from .store import Authority, StoreError

if TYPE_CHECKING:
    from .streams import ScheduleStreams

log = get_logger(__name__)

LEGACY = {"schedule.enable": "enable_schedule", "schedule.disable": "disable_schedule",
          "schedule.trigger_now": "trigger_now", "schedule.delete": "delete_schedule"}


def is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def positive_int(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def activate(streams: ScheduleStreams, params: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    session = streams.session_number()
    owner = str(target.get("scheduler") or params.get("scheduler") or params.get("owner") or "")
    state = streams.state(owner)
    try:
        expected_scope = scope_of(owner)
    except ExternalScheduleProtocolError as exc:
        raise CommandFailed(f"schedule.external.activate: {exc}") from None
    binding = [params.get(k) for k in ("source_scope", "stream_id", "epoch_uuid", "adapter_instance_id")]
    if (params.get("owner") != owner or not all(isinstance(v, str) and v for v in binding)
            or not positive_int(params.get("epoch_number")) or params.get("source_scope") != expected_scope
            or not is_uuid(params.get("stream_id")) or not is_uuid(params.get("epoch_uuid"))):
        raise CommandFailed("external activation does not bind the exact scheduler stream epoch")
    if params.get("stable_source") is not True:
        raise CommandFailed("external activation requires Brain-authorized stable source observation")
    wanted = Authority(owner, expected_scope, params["stream_id"], params["epoch_uuid"], params["epoch_number"],
                       params["adapter_instance_id"])
    with state.lock:
        try:
            auth = streams.store.activate(wanted)
        except StoreError as exc:
            raise CommandFailed(str(exc)) from None
        if not streams.bind(owner, auth, session):
            raise CommandFailed("external activation arrived in a session that has ended")
        try:
            summary = streams.snapshot(owner, "activation")
        except Exception as exc:  # noqa: BLE001 - any failure: forget the authority, say so
            streams.unbind(owner, auth)
            streams.store.forget(auth)
            raise CommandFailed(f"external activation snapshot was not durably buffered: {type(exc).__name__}: "
                                f"{str(exc)[:300]}") from None
    if summary is None:
        raise CommandFailed("external activation snapshot was not durably buffered: the session ended")
    log.info("schedules.activated", scheduler=owner, epoch_number=auth.epoch_number, rows=summary["schedule_count"])
    return summary


def resync(streams: ScheduleStreams) -> dict[str, Any]:
    drained = 0
    failures = []
    for owner in streams.names:
        drained += 1
        try:
            streams.snapshot(owner, "command")
        except Exception as exc:  # noqa: BLE001 - one unreadable scheduler does not stop the others
            failures.append(f"{owner}: {type(exc).__name__}: {str(exc)[:200]}")
    if failures:
        raise CommandFailed("schedule.resync could not observe " + "; ".join(failures), {"schedulers_drained": drained})
    return {"schedulers_drained": drained}


def legacy(streams: ScheduleStreams, action: str, params: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    owner = target.get("scheduler") or params.get("scheduler")
    if not owner:
        if len(streams.names) != 1:
            raise CommandFailed(f"no scheduler adapter registered for {action} without a scheduler name "
                                f"(this agent hosts {streams.names})")
        owner = streams.names[0]
    state = streams.state(str(owner))
    schedule_id = params.get("schedule_id") or target.get("schedule_id") or target.get("id")
    if not isinstance(schedule_id, str) or not schedule_id:
        raise CommandFailed("target.schedule_id required")
    method = getattr(state.adapter, LEGACY[action])
    with state.lock:
        result = as_command_result(resolve(method(schedule_id)))
    if not result.succeeded:
        raise CommandFailed(result.error or f"{action} failed", result.result)
    if action != "schedule.trigger_now":
        resnapshot(streams, str(owner), f"command:{action}")
    return dict(result.result or {})


def resnapshot(streams: ScheduleStreams, owner: str, reason: str) -> None:
    """After a change made outside the protocol, show the brain the new inventory (if streaming)."""
    try:
        streams.snapshot(owner, reason)
    except Exception as exc:  # noqa: BLE001 - the change landed; the next observation will show it
        log.warning("schedules.observation_failed", scheduler=owner, reason=reason, error=str(exc)[:300])
