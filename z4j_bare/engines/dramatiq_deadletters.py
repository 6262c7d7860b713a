"""Dead letters (``dlq.list``) and ``reconcile_task`` for Dramatiq: reading what the broker holds.

Redis dead letters are read from ``<ns>:<q>.XQ`` (newest first, the brain's page shape). A
RabbitMQ dead-letter queue cannot be read without consuming it, so the page carries its count
(``total``) and no entries. Reconcile asks the Results backend first (authoritative for
finished messages that store results), then the Redis broker (waiting, taken, dead-lettered).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import CommandFailed, CommandRequest
from .dramatiq_broker import BrokerError, parse_body
from .dramatiq_capture import _find_results
from .dramatiq_support import STORE_WAIT_SECONDS, iso, record, scrub

if TYPE_CHECKING:
    from .dramatiq_support import DramatiqAdapterView

MAX_DLQ_PAGE = 200
MAX_ACTORS = 500


def dead_letter_page(adapter: DramatiqAdapterView, request: CommandRequest) -> dict[str, Any]:
    limit = request.param("limit", 100)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise CommandFailed("list_dead_letters: limit must be a positive integer")
    limit = min(limit, MAX_DLQ_PAGE)
    queue = request.param("queue")
    names = [queue] if isinstance(queue, str) and queue else adapter.queues()
    ops = adapter.ops
    try:
        counts = [ops.dead_count(name) for name in names]
    except BrokerError as exc:
        raise CommandFailed(f"list_dead_letters: {exc}") from None
    if ops.kind != "redis":
        return {"entries": [], "next_cursor": None, "total": sum(counts), "engine": adapter.name,
                "by_queue": {n: c for n, c in zip(names, counts) if c},
                "note": "RabbitMQ dead-letter queues cannot be read without consuming them: counts only"}
    start_q, offset = 0, 0
    cursor = request.param("cursor")
    if cursor:
        try:
            off, _, qname = str(cursor).partition("@")
            offset, start_q = int(off), names.index(qname)
        except ValueError:
            raise CommandFailed("list_dead_letters: cursor is not one this agent issued") from None
    rows: list[tuple[str, str, float, Any]] = []
    next_cursor = None
    for index in range(start_q, len(names)):
        name = names[index]
        need = limit - len(rows)
        page = ops.dead_page(name, offset, need + 1)
        rows.extend((name, rid, at, body) for rid, at, body in page[:need])
        if len(page) > need:
            next_cursor = f"{offset + need}@{name}"
            break
        offset = 0
        if len(rows) >= limit and any(counts[index + 1:]):
            following = next(i for i in range(index + 1, len(names)) if counts[i])
            next_cursor = f"0@{names[following]}"
            break
    parsed = [(name, rid, at, parse_body(body)) for name, rid, at, body in rows]
    ids = [f["message_id"] for *_, f in parsed if f]
    known = adapter.store.get_many(ids, wait=STORE_WAIT_SECONDS) if adapter.store and ids else {}
    entries = []
    for name, rid, at, fields in parsed:
        if fields is None:
            entries.append({"task_id": rid, "task_name": "unknown", "queue": name, "failed_at": iso(at),
                            "error_excerpt": "message body is not JSON (custom encoder): not decoded", "attempts": 1})
            continue
        seen = known.get(fields["message_id"]) or {}
        options = fields.get("options") or {}
        error = seen.get("error") or _last_line(options.get("traceback"))
        attempts = max(int(seen.get("attempts") or 1), int(options.get("retries") or 0) + 1)
        entries.append({"task_id": fields["message_id"], "task_name": fields.get("actor_name") or "unknown",
                        "queue": name, "failed_at": iso(at), "error_excerpt": scrub(adapter, error), "attempts": attempts})
    return {"entries": entries, "next_cursor": next_cursor, "total": sum(counts), "engine": adapter.name}


def _last_line(text: Any) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return None
    return text.strip().splitlines()[-1][:500]


def reconcile(adapter: DramatiqAdapterView, message_id: str) -> dict[str, Any]:
    found = record(adapter, message_id)
    out: dict[str, Any] = {"task_id": message_id, "engine_state": "unknown", "finished_at": None, "exception": None}
    results = _find_results(adapter.broker)
    if results is not None:
        # A result key names the queue and the actor: the agent's record says which, else every
        # actor this broker declares is tried (one read each).
        candidates = ([(found["queue"], found["actor"])] if found is not None else
                      [(actor.queue_name, name) for name, actor in list(adapter.broker.actors.items())[:MAX_ACTORS]])
        for queue, actor in candidates:
            answer = _from_results(results.backend, message_id, queue, actor)
            if answer is not None:
                return {**out, **answer}
    ops = adapter.ops
    if ops.kind == "redis":
        queues = [found["queue"]] if found is not None else adapter.queues()
        try:
            for queue in queues:
                answer = _from_redis(ops, queue, message_id, found)
                if answer is not None:
                    return {**out, **answer}
        except BrokerError as exc:
            raise CommandFailed(f"reconcile_task: {exc}") from None
    out["reason"] = ("no Results backend holds it and the broker does not show it"
                     if results is not None or ops.kind == "redis"
                     else "no Results middleware on the broker, and RabbitMQ cannot be looked into")
    return out


def _from_results(backend: Any, message_id: str, queue: str, actor: str) -> dict[str, Any] | None:
    from dramatiq import Message
    from dramatiq.results import ResultFailure, ResultMissing

    probe = Message(queue_name=queue, actor_name=actor, args=(), kwargs={}, options={}, message_id=message_id)
    try:
        backend.get_result(probe, block=False)
    except ResultMissing:
        return None
    except ResultFailure as exc:
        return {"engine_state": "failure", "exception": f"{exc.orig_exc_type}: {exc.orig_exc_msg}"[:500],
                "source": "results_backend"}
    except Exception as exc:  # noqa: BLE001
        raise CommandFailed(f"reconcile_task: result backend unreachable: {type(exc).__name__}") from None
    return {"engine_state": "success", "source": "results_backend"}


def _from_redis(ops: Any, queue: str, message_id: str, record: dict[str, Any] | None) -> dict[str, Any] | None:
    redis_id = record.get("redis_id") if record else None
    found = ops.find(queue, message_id, redis_id)
    if found is not None:
        where, rid, _ = found
        suffix = ".DQ" if where == "delayed" else ""
        waiting = ops.client.lpos(ops.key(queue, suffix), rid) is not None
        state = "pending" if waiting or where == "delayed" else "started"
        return {"engine_state": state, "source": "broker", "queue": queue}
    dead = ops.find_dead(queue, message_id, redis_id)
    if dead is not None:
        score = ops.client.zscore(ops.key(queue, ".XQ"), dead[0])
        fields = parse_body(dead[1]) or {}
        error = (record or {}).get("error") or _last_line((fields.get("options") or {}).get("traceback"))
        return {"engine_state": "failure", "source": "dead_letter_queue", "queue": queue,
                "finished_at": iso(score / 1000.0 if score is not None else None), "exception": error}
    return None
