"""The command channel: verified commands in, one execution each, truthful results out.

The I/O thread calls ``submit(frame)`` for every ``command`` frame that passed HMAC and the
replay guard; nothing else reaches this module. ``submit`` never blocks: it queues the
``command_ack`` and hands execution to a small worker pool with a per-command deadline. Acks and
results go to ``emit`` (the runtime's ``controls.ControlFrames.emit``), which makes them durable
and sends them ahead of the event backlog until the brain has them.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .commands_pool import DaemonPool
from .engines.base import CommandFailed, CommandRequest, EngineAdapter, Redacted
from .events import EventKind
from .logs import get_logger
from .orchestrator import detect_orchestrator
from .protocol import Frame, FrameType, purge_token

if TYPE_CHECKING:
    from .buffer import BufferStore
    from .redaction import Redactor

log = get_logger(__name__)

FIRE_ACTIONS = frozenset({"schedule.fire", "schedule.trigger_now", "schedule.trigger_now.via_scheduler"})
FILTER_ENGINE_ACTIONS = frozenset({"bulk_retry", "requeue_dead_letter"})
MAX_QUEUED = 256
RESTART_FLAP_GUARD_SECONDS = 60.0
MAX_ERROR_CHARS = 8192

Emit = Callable[[str, str, dict[str, Any]], None]


class CommandChannel:
    def __init__(
        self,
        engines: Mapping[str, EngineAdapter],
        buffer: BufferStore,
        key: bytes,
        emit: Emit,
        *,
        workers: int = 2,
        timeout: float = 60.0,
        dedupe_ttl: float = 3600.0,
        purge_threshold: int = 1000,
        orchestrated: bool | None = None,
        exit_process: Callable[[int], None] = os._exit,
        redactor: Redactor | None = None,
    ) -> None:
        self._engines = dict(engines)
        self._buffer = buffer
        self._key = key
        self._emit = emit
        self._timeout = timeout
        self._dedupe_ttl = dedupe_ttl
        self._purge_threshold = purge_threshold
        self._orchestrated = orchestrated
        self._exit_process = exit_process
        self._redactor = redactor
        self._pool = DaemonPool(workers, "z4j-command")
        self._lock = threading.Lock()
        self._inflight: set[str] = set()
        self._queued = 0
        self._started_at = time.monotonic()
        self._executors: list[Any] = []
        self.executed = 0
        self.duplicates = 0

    def __repr__(self) -> str:
        return f"CommandChannel(engines={sorted(self._engines)}, inflight={len(self._inflight)})"

    def add_executor(self, executor: Any) -> None:
        """Route the actions ``executor.executes(action)`` claims to ``executor.execute(action,
        parameters, target)`` (a channel's commands: see ``channels.py``); acks, dedupe, deadline
        and results stay here."""
        self._executors.append(executor)

    # -- intake (I/O thread) -----------------------------------------------------------------
    def submit(self, frame: Frame) -> None:
        payload = frame.payload
        claim = payload.get("delivery_claim_token")
        claim = claim if isinstance(claim, str) else None
        params = payload.get("parameters") if isinstance(payload.get("parameters"), dict) else {}
        action = payload.get("action") if isinstance(payload.get("action"), str) else ""
        key = dedupe_key(frame.id, action, params)
        self._emit(FrameType.COMMAND_ACK.value, frame.id, {"delivery_claim_token": claim})
        with self._lock:
            duplicate = key in self._inflight or self._buffer.seen_command(key)
            if not duplicate:
                if self._queued >= MAX_QUEUED:
                    self._result(frame.id, claim, "failed", None, "agent busy: too many commands queued; retry later")
                    return
                self._inflight.add(key)
                self._queued += 1
        if duplicate:
            self.duplicates += 1
            log.info("commands.duplicate", command_id=frame.id, action=action)
            if action in FIRE_ACTIONS:
                self._result(frame.id, claim, "success", {"deduplicated": True, "dedup_key": key}, None)
            return
        target = payload.get("target") if isinstance(payload.get("target"), dict) else {}
        self._pool.submit(self._run, frame.id, claim, key, action, params, target)

    # -- execution (worker threads) ----------------------------------------------------------
    def _run(self, command_id: str, claim: str | None, key: str, action: str, params: dict, target: dict) -> None:
        done = threading.Event()
        once = threading.Lock()

        def finish(status: str, result: dict | None, error: str | None) -> None:
            with once:
                if done.is_set():
                    return
                done.set()
            self._result(command_id, claim, status, result, error)

        def on_timeout() -> None:
            finish("failed", {"indeterminate": True, "operation": action},
                   f"INDETERMINATE: {action} did not finish within {self._timeout:.0f} s; its effect is unknown")

        timer = threading.Timer(self._timeout, on_timeout)
        timer.daemon = True
        timer.start()
        try:
            status, result, error = self.execute(command_id, action, params, target)
            finish(status, result, error)
        finally:
            timer.cancel()
            self._buffer.remember_command(key, self._dedupe_ttl)
            with self._lock:
                self._inflight.discard(key)
                self._queued -= 1
            self.executed += 1

    def execute(self, command_id: str, action: str, params: Mapping[str, Any], target: Mapping[str, Any]) -> tuple[str, dict | None, str | None]:
        """Run one command to a (status, result, error) triple. Never raises."""
        started = time.monotonic()
        try:
            result = self._dispatch(command_id, action, params, target)
            outcome = ("success", result if isinstance(result, dict) else {"value": result}, None)
        except CommandFailed as exc:
            outcome = ("failed", exc.result, str(exc)[:MAX_ERROR_CHARS])
        except Exception as exc:  # noqa: BLE001 - an adapter bug must not crash the agent
            outcome = ("failed", None, f"internal error: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
        log.info("commands.executed", command_id=command_id, action=action, status=outcome[0],
                 elapsed_ms=round((time.monotonic() - started) * 1000, 1))
        return outcome

    def _dispatch(self, command_id: str, action: str, params: Mapping[str, Any], target: Mapping[str, Any]) -> Any:
        if not action:
            raise CommandFailed("command has no action")
        for executor in self._executors:
            if executor.executes(action):
                return executor.execute(action, params, target)
        if action.startswith("schedule.") and action != "schedule.fire":
            raise CommandFailed(f"unrecognized schedule action {action!r}: this agent hosts no scheduler")
        engine = self._select_engine(action, params, target)
        adapter = self._engines[engine]
        request = CommandRequest(command_id, action, engine, params, target)
        if action == "schedule.fire":
            return self._call(adapter, "submit_task", request)
        if action == "dlq.list":
            return self._call(adapter, "list_dead_letters", request)
        if action == "reconcile_task":
            method = getattr(adapter, "reconcile_task", None)
            if method is None:
                return {"task_id": request.param("task_id"), "engine_state": "unknown"}
            return method(request)
        if action == "purge_queue":
            return self._purge(adapter, request)
        if action == "restart_worker" and "restart_worker" not in adapter.capabilities():
            return self._self_exit(engine, request)
        return self._call(adapter, action, request)

    def _call(self, adapter: EngineAdapter, action: str, request: CommandRequest) -> Any:
        if action not in adapter.capabilities():
            raise CommandFailed(f"unrecognized action {action!r}" if not hasattr(adapter, action)
                                else f"adapter {adapter.name} does not support action {action!r}")
        return getattr(adapter, action)(request)

    def _select_engine(self, action: str, params: Mapping[str, Any], target: Mapping[str, Any]) -> str:
        filt = params.get("filter") if isinstance(params.get("filter"), dict) else {}
        if action in FILTER_ENGINE_ACTIONS and filt.get("engine"):
            engine = str(filt["engine"])
            if engine not in self._engines:
                raise CommandFailed(f"engine {engine!r} named by the filter is not loaded in this agent")
            return engine
        p_engine, t_engine = params.get("engine"), target.get("engine")
        if p_engine and t_engine and p_engine != t_engine:
            raise CommandFailed(f"parameters.engine {p_engine!r} does not match target.engine {t_engine!r}")
        engine = p_engine or t_engine
        if engine:
            if engine not in self._engines:
                raise CommandFailed(f"engine {engine!r} is not loaded in this agent (loaded: {sorted(self._engines)})")
            return str(engine)
        if len(self._engines) == 1:
            return next(iter(self._engines))
        raise CommandFailed(f"command names no engine and this agent runs several: {sorted(self._engines)}")

    def _purge(self, adapter: EngineAdapter, request: CommandRequest) -> dict:
        if "purge_queue" not in adapter.capabilities():
            raise CommandFailed(f"adapter {adapter.name} does not support action 'purge_queue'")
        queue = request.require("queue")
        force = request.parameters.get("force") is True
        depth = adapter.queue_depth(queue)
        if not force:
            token = request.parameters.get("confirm_token")
            if not isinstance(token, str) or not token:
                raise CommandFailed("purge_queue refused: confirm_token missing (or pass force=true)")
            if depth is None:
                raise CommandFailed(f"purge_queue refused: depth of queue {queue!r} is unknown (pass force=true)")
            if depth > self._purge_threshold:
                raise CommandFailed(f"purge_queue refused: depth {depth} exceeds the threshold {self._purge_threshold} (Z4J_PURGE_THRESHOLD); pass force=true")
            if not hmac.compare_digest(token, purge_token(self._key, queue, depth)):
                raise CommandFailed(f"purge_queue refused: confirm_token does not match queue {queue!r} at depth {depth} (the queue changed, or the token is stale)")
        result = dict(adapter.purge_queue(request) or {})
        result.setdefault("queue", queue)
        result.setdefault("depth_before", depth)
        result["force"] = force
        return result

    def _self_exit(self, engine: str, request: CommandRequest) -> dict:
        worker = request.param("worker_name", "")
        orchestrator = detect_orchestrator() if self._orchestrated is None else ("configured" if self._orchestrated else None)
        if orchestrator is None:
            raise CommandFailed("restart_worker refused: engine has no native restart and no orchestrator was detected "
                                "to start this process again (set Z4J_ORCHESTRATED=1 if one does)")
        age = time.monotonic() - self._started_at
        if age < RESTART_FLAP_GUARD_SECONDS:
            raise CommandFailed(f"restart_worker refused: agent started {age:.0f} s ago; restarts within "
                                f"{RESTART_FLAP_GUARD_SECONDS:.0f} s are refused to avoid a restart loop")
        from .events import build_event, encode_event

        self._buffer.append("event", encode_event(build_event(EventKind.WORKER_OFFLINE, engine, "", {"reason": "restart", "worker_name": worker})), engine=engine)
        timer = threading.Timer(0.25, self._exit_process, args=(0,))
        timer.daemon = True
        timer.start()
        return {"restarted_via": "self_exit", "worker_name": worker, "exit_in_seconds": 0.25, "orchestrator": orchestrator}

    def _result(self, command_id: str, claim: str | None, status: str, result: dict | None, error: str | None) -> None:
        if self._redactor is not None:
            # An adapter's exception text can carry a broker URL with its password, a result
            # can carry task data: they leave the host like events do, scrubbed (once: a result
            # its producer redacted itself is marked Redacted).
            if result is not None and not isinstance(result, Redacted):
                result = self._redactor.scrub(result)
            error = self._redactor.scrub_text(error) if error is not None else None
        self._emit(FrameType.COMMAND_RESULT.value, command_id,
                   {"status": status, "result": result, "error": error, "delivery_claim_token": claim})

    def shutdown(self) -> None:
        """Commands not started are dropped (the brain times them out); running ones finish on
        daemon threads that never hold up the interpreter's exit."""
        self._pool.shutdown()


def dedupe_key(command_id: str, action: str, params: Mapping[str, Any]) -> str:
    fire_id = params.get("fire_id")
    if action in FIRE_ACTIONS and isinstance(fire_id, str) and fire_id:
        return f"fire:{fire_id}"
    return f"cmd:{command_id}"

