"""One observation of a scheduler: its inventory turned into rows the brain can store.

Rows are normalized (schedules.md 5.3) with args/kwargs redacted like task arguments, then
checked against what the brain can store (8.4). A row the brain could not store would wedge the
stream forever, so it is left out, counted and logged by name; the rest still goes out. A read
failure of the inventory itself fails the whole observation (a partial list would make the
brain delete the missing rows).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..logs import get_logger
from ..protocol import EVENT_ZONE, utc_text
from ..protocol.schedules import ExternalScheduleProtocolError, normalize_external_schedule, storable_problem
from .model import schedule_raw

if TYPE_CHECKING:
    from ..redaction import Redactor

log = get_logger(__name__)


def resolve(value: Any) -> Any:
    """The value, or what it resolves to when an ``async def`` adapter method returned a coroutine."""
    if inspect.isawaitable(value):
        async def wait() -> Any:
            return await value

        return asyncio.run(wait())
    return value


def iso_now() -> str:
    return utc_text(zone=EVENT_ZONE)


class Projector:
    """raw schedule -> the row the brain sees (normalized, args/kwargs redacted)."""

    def __init__(self, owner: str, redactor: Redactor | None) -> None:
        self.owner = owner
        self._redactor = redactor

    def __call__(self, schedule: Any) -> dict[str, Any]:
        raw = schedule_raw(schedule) if not isinstance(schedule, Mapping) else dict(schedule)
        if self._redactor is not None:
            raw["args"] = self._scrub(raw.get("args", []))
            raw["kwargs"] = self._scrub(raw.get("kwargs", {}))
        return normalize_external_schedule(raw, self.owner)

    def _scrub(self, value: Any) -> Any:
        # Only a list or an object is scrubbed; anything else is left for normalization to refuse.
        if isinstance(value, (list, tuple, Mapping)):
            return self._redactor.scrub(value)  # type: ignore[union-attr]
        return value


@dataclass(slots=True)
class Observation:
    rows: list[dict[str, Any]]
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def observe(adapter: Any, project: Projector) -> Observation:
    """Read the adapter's complete inventory; raises when it cannot be read."""
    schedules = resolve(adapter.list_schedules())
    if not isinstance(schedules, (list, tuple)):
        raise TypeError(f"{adapter!r}.list_schedules() returned {type(schedules).__name__}, not a list")
    rows: list[dict[str, Any]] = []
    left_out: list[tuple[str, str]] = []
    names: set[str] = set()
    keys: set[str] = set()
    for schedule in schedules:
        label = str(getattr(schedule, "name", None) or (schedule.get("name") if isinstance(schedule, Mapping) else "?"))
        try:
            row = project(schedule)
        except (ExternalScheduleProtocolError, ValueError, TypeError) as exc:
            left_out.append((label[:200], str(exc)[:300]))
            continue
        problem = storable_problem(row)
        if problem is None and row["name"] in names:
            problem = "another schedule of this scheduler has the same name"
        if problem is None and row["source_key"] in keys:
            problem = "another schedule of this scheduler has the same source key"
        if problem is not None:
            left_out.append((row["name"][:200], problem))
            continue
        names.add(row["name"])
        keys.add(row["source_key"])
        rows.append(row)
    if left_out:
        log.warning("schedules.rows_left_out", scheduler=project.owner, count=len(left_out),
                    rows=[f"{name}: {why}" for name, why in left_out[:10]])
    return Observation(rows, left_out)
