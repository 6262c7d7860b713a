"""``python -m z4j_bare demo`` (``make demo``): the agent doing its job, end to end, on this machine.

What it does, with nothing else installed or running:

1. starts the embedded reference brain (``z4j_bare.testing.LocalBrain``) on 127.0.0.1;
2. starts a real Celery worker subprocess (prefork, 2 processes) with the agent installed. The
   broker is Redis when one answers on 127.0.0.1:6379, else kombu's ``filesystem://`` transport
   in a temp dir (no server). With Redis it also starts an RQ worker with the agent, and a
   ``dramatiq`` command (2 worker processes sharing one agent process);
3. sends a stream of tasks (successes, a failure, a task that retries itself, one that fails
   because a "carrier API" is down), printing each event as the brain stores it plus a status
   line per agent (online, session, buffer depth the agent reports, heartbeats);
4. "fixes the outage" and retries the failed task **from the brain**, showing the round trip:
   command -> command_ack -> command_result -> the new task's events;
5. shows ``celery beat``'s schedule (a beat process with the agent and no engine) in the brain,
   read-only, and triggers it from the brain: the confirming snapshot, then the worker runs it;
6. stops the workers (SIGTERM: the agents drain and say goodbye), prints a summary and checks
   it: exit 0 when every check passed, 1 otherwise. Nothing is left behind: the temp Z4J_HOME,
   the broker folder and the demo's Redis keys are removed, and every process group is reaped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .demo_view import LiveView, WorkerGroup

DEADLINE_SECONDS = 100.0
CARD = "4111 1111 1111 1111"


class DemoFailed(Exception):
    """A step of the demo did not happen in time; the message says which and what was seen."""


class Console:
    """Line-oriented output that reads well in a terminal and in a CI log alike."""

    def __init__(self, stream: Any = None, color: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.color = tty and os.environ.get("NO_COLOR") is None if color is None else color
        self.t0 = time.monotonic()

    def _c(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def line(self, text: str = "", *, tag: str = "", code: str = "") -> None:
        stamp = f"{time.monotonic() - self.t0:6.2f}s"
        prefix = f"{self._c('2', stamp)} {self._c(code, f'{tag:<8}') if tag else ' ' * 8} "
        self.stream.write(prefix + text + "\n")
        self.stream.flush()

    def title(self, text: str) -> None:
        self.stream.write("\n" + self._c("1", f"== {text}") + "\n")
        self.stream.flush()


def _redis_url(disabled: bool) -> str | None:
    if disabled:
        return None
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.3):
            pass
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=1)
        client.ping()
        client.close()
    except Exception:  # noqa: BLE001 - no usable Redis: run on the embedded broker
        return None
    return "redis://127.0.0.1:6379/0"


class Demo:
    def __init__(self, *, use_redis: bool = True, out: Console | None = None, transport: str = "auto") -> None:
        self.out = out or Console()
        # The engine workers' transport. The beat process stays on WebSocket: brain 1.13 runs
        # the schedule channel over WebSocket only.
        self.transport = transport
        self.deadline = time.monotonic() + DEADLINE_SECONDS
        self.tmp = Path(tempfile.mkdtemp(prefix="z4j-demo-"))
        self.tag = secrets.token_hex(4)
        self.queue = f"z4j-demo-{self.tag}"
        self.redis_url = _redis_url(not use_redis)
        self.marker = self.tmp / "carrier-api-down"
        self.workers = WorkerGroup(self.tmp)
        self.checks: list[tuple[str, bool, str]] = []
        self.commands: list[dict[str, Any]] = []
        self.expected: dict[tuple[str, str], tuple[str, str]] = {}  # (engine, id) -> (name, final state)
        self.brain: Any = None
        self.agents: dict[str, Any] = {}
        self.view: LiveView | None = None
        self._rq_job_ids: list[str] = []
        self.dq_namespace = f"z4j-demo-{self.tag}-dq"

    # -- helpers ---------------------------------------------------------------------------------
    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, bool(ok), detail))
        return bool(ok)

    def remaining(self, cap: float) -> float:
        return max(0.5, min(cap, self.deadline - time.monotonic()))

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float, *, workers_alive: bool = True) -> Any:
        """Poll ``predicate`` while keeping the live view going; DemoFailed on timeout (or, with
        ``workers_alive``, when a worker exits meanwhile)."""
        end = time.monotonic() + self.remaining(timeout)
        while True:
            self.pump()
            value = predicate()
            if value:
                return value
            if time.monotonic() >= end:
                raise DemoFailed(f"timed out waiting for {what}")
            gone = self.workers.exited() if workers_alive else None
            if gone is not None:
                raise DemoFailed(f"the {gone[0]} worker exited early (code {gone[1]}) while waiting "
                                 f"for {what}; its log:\n{self.workers.tail(gone[0])}")
            time.sleep(0.05)

    def pump(self) -> None:
        if self.view is not None:
            self.view.pump()

    # -- processes -------------------------------------------------------------------------------
    def _env(self, engine: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_")}
        env.update(self.agents[engine].env())
        env.update({
            "Z4J_HOME": str(self.tmp / f"home-{engine}"),
            "Z4J_AGENT_NAME": f"demo-{engine}-worker",
            "Z4J_TRANSPORT": self.transport if engine != "beat" else "auto",
            "Z4J_DEMO_QUEUE": self.queue,
            "Z4J_DEMO_BROKER": self.broker_url,
            "Z4J_DEMO_BROKER_DIR": str(self.tmp / "broker"),
            "Z4J_DEMO_DRAMATIQ_NAMESPACE": self.dq_namespace,
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def _spawn_worker(self, name: str, argv: list[str]) -> None:
        self.workers.spawn(name, argv, self._env(name))

    # -- the story -------------------------------------------------------------------------------
    def run(self) -> int:
        engines = self.start()
        ship_ids = self.send_tasks(engines)

        self.out.title("operator retries the failed task from the brain")
        self.marker.unlink()
        self.out.line("the carrier API is back (outage marker removed)")
        for engine, (task_id, name) in ship_ids.items():
            new_id = self.retry_round_trip(engine, task_id, name)
            if new_id and engine != "rq":  # an RQ retry requeues the same job id
                self.expected[(engine, new_id)] = (f"{name} (retry)", "SUCCESS")

        self.beat_round_trip()
        self.shut_down(engines)
        self.verify(engines)
        return self.summary()

    def start(self) -> list[str]:
        """The brain, one agent per engine (and beat), the worker processes; wait for each hello."""
        from .testing import LocalBrain

        out = self.out
        out.title("z4j-bare demo: a real worker, the agent, and a local brain")
        (self.tmp / "broker").mkdir()
        (self.tmp / "broker-control").mkdir()
        if self.redis_url:
            self.broker_url = self.redis_url
            out.line(f"Redis answers on 127.0.0.1:6379: Celery uses it as broker, and an RQ worker joins, "
                     f"and a dramatiq command (queue {self.queue}; its keys are removed at the end)")
        else:
            self.broker_url = "filesystem://"
            out.line("no Redis on 127.0.0.1:6379: Celery uses kombu's filesystem:// broker in a temp dir "
                     "(start Redis to add an RQ worker)")
        self.brain = LocalBrain(heartbeat_interval=1).start()
        out.line(f"local brain listening at {self.brain.url} (Z4J_HOME for the agents: {self.tmp})", tag="brain")
        if self.transport != "auto":
            out.line(f"the workers' agents use transport={self.transport}", tag="brain")
        engines = ["celery"] + (["rq"] if self.redis_url else []) + (["dramatiq"] if self.redis_url and _has_dramatiq() else [])
        for engine in engines:
            self.agents[engine] = self.brain.mint_agent(name=f"demo-{engine}")
        self.agents["beat"] = self.brain.mint_agent(name="demo-beat")
        self.view = LiveView(self.brain, self.agents, out.line)

        self._spawn_worker("celery", [sys.executable, "-m", "celery", "-A", "z4j_bare.demo_tasks", "worker",
                               "-Q", self.queue, "-c", "2", "-n", f"demo-{self.tag}@%h", "--loglevel=warning",
                               "--without-gossip", "--without-mingle", "--without-heartbeat"])
        if "rq" in engines:
            self._spawn_worker("rq", [sys.executable, "-m", "rq.cli", "worker", "-u", self.redis_url,
                               "-w", "z4j_rq.Worker", "-n", f"demo-{self.tag}",
                               "--logging_level", "WARNING", self.queue])
        if "dramatiq" in engines:
            # The dramatiq CLI: a supervisor, 2 worker processes, and the z4j agent process it starts.
            self._spawn_worker("dramatiq", [sys.executable, "-m", "dramatiq", "z4j_bare.demo_dramatiq", "-p", "2", "-t", "2",
                                     "-Q", self.queue])
        self._spawn_worker("beat", [sys.executable, "-m", "celery", "-A", "z4j_bare.demo_tasks", "beat",
                             "-s", str(self.tmp / "beat-schedule"), "--loglevel=warning"])
        out.line(f"started {' and '.join(engines)} worker subprocess(es) and celery beat; waiting for the agents' "
                 "handshake")
        for engine in engines:
            row = self.wait(f"the {engine} agent to connect", lambda e=engine: self._online(e), 30)
            out.line(f"{engine} agent connected: hello advertises {row['capabilities'].get(engine, [])[:4]}...",
                     tag="agent", code="32")
        return engines

    def send_tasks(self, engines: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Each engine's stream of tasks, waited to their final states; the failed "ship" task of each."""
        out = self.out
        out.title("a stream of tasks")
        celery_app = self._celery_app()
        self.marker.write_text("down")
        sent = []
        for i in range(6):
            sent.append(("demo.add", celery_app.send_task("demo.add", args=[i, i], queue=self.queue).id, "SUCCESS"))
            self.pump()
            time.sleep(0.08)
        sent.append(("demo.charge", celery_app.send_task("demo.charge", args=["order-7", 19.9],
                                                         kwargs={"card_number": CARD}, queue=self.queue).id, "SUCCESS"))
        sent.append(("demo.fail", celery_app.send_task("demo.fail", args=["bad input"], queue=self.queue).id, "FAILURE"))
        sent.append(("demo.flaky", celery_app.send_task("demo.flaky", args=[21], queue=self.queue).id, "SUCCESS"))
        ship_id = celery_app.send_task("demo.ship", args=["order-7", str(self.marker)], queue=self.queue).id
        sent.append(("demo.ship", ship_id, "FAILURE"))
        for name, task_id, state in sent:
            self.expected[("celery", task_id)] = (name, state)
        ships = {"celery": (ship_id, "demo.ship")}
        if "rq" in engines:
            ships["rq"] = (self._enqueue_rq(), "rq_ship")
        if "dramatiq" in engines:
            ships["dramatiq"] = (self._send_dramatiq(), "dq_ship")
        for (engine, task_id), (name, state) in list(self.expected.items()):
            self.wait(f"{engine} task {name} {task_id} to reach {state}",
                      lambda e=engine, t=task_id, s=state: self._state(e, t) == s, 30)
        return ships

    def shut_down(self, engines: Sequence[str]) -> None:
        out = self.out
        out.title("stopping the workers (SIGTERM): the agents drain their buffers and close")
        before = self.brain.event_count()
        stopping = time.monotonic()
        self.workers.stop(self.check)
        out.line(f"workers exited after {time.monotonic() - stopping:.1f} s", tag="agent")
        # A long-poll agent has no socket whose close the brain sees: it reads offline a moment
        # after its last poll was cut off, by which time its worker has exited.
        self.wait("the agents to go offline", lambda: not any(self._online(e) for e in engines), 15,
                  workers_alive=False)
        self.pump()
        out.line(f"{self.brain.event_count() - before} more event(s) arrived during shutdown", tag="agent")

    def beat_round_trip(self) -> None:
        """celery beat's schedule shows up in the brain; the operator triggers it; a worker runs it."""
        out = self.out
        out.title("celery beat: its schedule in the brain, triggered by the operator")
        row = self.wait("beat's schedule to appear in the brain",
                        lambda: (self.brain.schedules.list() or [None])[0], 30)
        stream = self.brain.schedules.stream("celery-beat")
        out.line(f"schedule {row['name']!r}: {row['kind']} {row['expression']!r} -> {row['task_name']}{row['args']} "
                 f"(source {row['source']}, stream epoch {stream.epoch_number}, sequence {stream.accepted})",
                 tag="beat", code="36")
        try:
            self.brain.schedules.set_enabled(row["id"], False)
            refused = "not refused"
        except Exception as exc:  # noqa: BLE001 - the expected refusal
            refused = str(exc)
        out.line(f"disable refused by the brain: {refused}", tag="brain")
        self.check("a static beat schedule is read-only in the brain", "read-only" in refused, refused)
        started = time.monotonic()
        command_id = self.brain.schedules.trigger(row["id"])
        out.line(f"command schedule.external.mutate (trigger) {command_id[:8]} -> beat agent", tag="brain")
        status = self.brain.schedules.wait_applied(command_id, timeout=min(30, self.remaining(30)))
        record = self.brain.command(command_id)
        result = (record.result or {}).get("trigger_result") or {}
        task_id = (result.get("result") or {}).get("task_id")
        out.line(f"command_result {record.status} in {(time.monotonic() - started) * 1000:.0f} ms; the confirming "
                 f"snapshot makes it {status}; task {str(task_id)[:8]} sent", tag="beat", code="36")
        self.check("the beat trigger was confirmed by the brain (APPLIED)", status == "APPLIED",
                   f"{status}: {record.error}")
        if task_id:
            self.expected[("celery", task_id)] = ("demo.add (beat trigger)", "SUCCESS")
            self.wait("the triggered task to run on the worker", lambda: self._state("celery", task_id) == "SUCCESS", 30)
            out.line(f"the worker ran demo.add{tuple(row['args'])} from the trigger: SUCCESS", tag="beat", code="32")

    def _online(self, engine: str) -> dict[str, Any] | None:
        row = self.brain.agent(self.agents[engine].agent_id)
        return row if row["online"] else None

    def _state(self, engine: str, task_id: str) -> str | None:
        row = self.brain.task(engine, task_id)
        return row["state"] if row else None

    def _celery_app(self) -> Any:
        os.environ.update({"Z4J_DEMO_BROKER": self.broker_url, "Z4J_DEMO_BROKER_DIR": str(self.tmp / "broker"),
                           "Z4J_DEMO_QUEUE": self.queue})
        from .demo_tasks import make_app

        self.celery_app = make_app()
        return self.celery_app

    def _enqueue_rq(self) -> str:
        import redis
        from rq import Queue

        from . import demo_tasks

        conn = redis.Redis.from_url(self.redis_url)
        q = Queue(self.queue, connection=conn)
        jobs = [(q.enqueue(demo_tasks.rq_add, i, 10 * i), "rq_add", "SUCCESS") for i in range(3)]
        jobs.append((q.enqueue(demo_tasks.rq_fail, "bad input"), "rq_fail", "FAILURE"))
        ship = q.enqueue(demo_tasks.rq_ship, "order-8", str(self.marker))
        jobs.append((ship, "rq_ship", "FAILURE"))
        for job, name, state in jobs:
            self.expected[("rq", job.id)] = (name, state)
            self._rq_job_ids.append(job.id)
        conn.close()
        return ship.id

    def _send_dramatiq(self) -> str:
        os.environ.update({"Z4J_DEMO_BROKER": self.redis_url, "Z4J_DEMO_QUEUE": self.queue,
                           "Z4J_DEMO_DRAMATIQ_NAMESPACE": self.dq_namespace})
        from . import demo_dramatiq as dq

        sent = [(dq.dq_add.send(i, 100), "dq_add", "SUCCESS") for i in range(3)]
        sent.append((dq.dq_charge.send("order-9", 42.0, card_number=CARD), "dq_charge", "SUCCESS"))
        sent.append((dq.dq_flaky.send(21, str(self.tmp / "dq-flaky-tried")), "dq_flaky", "SUCCESS"))
        ship = dq.dq_ship.send("order-10", str(self.marker))
        sent.append((ship, "dq_ship", "FAILURE"))
        for message, name, state in sent:
            self.expected[("dramatiq", message.message_id)] = (name, state)
        dq.broker.close()
        return ship.message_id

    def retry_round_trip(self, engine: str, task_id: str, name: str) -> str | None:
        out = self.out
        creds = self.agents[engine]
        params = {"task_id": task_id, "task_name": name, "args": None, "kwargs": None, "override_args": None,
                  "override_kwargs": None, "original_had_args": True, "eta": None, "eta_seconds": None,
                  "priority": None}
        started = time.monotonic()
        cid = self.brain.send_command("retry_task", params, agent_id=creds.agent_id, engine=engine)
        out.line(f"brain -> {engine} agent: command retry_task {cid[:8]} for {name} {task_id[:8]}", tag="command",
                 code="34")
        record: dict[str, Any] = {"engine": engine, "action": "retry_task", "task_id": task_id, "command_id": cid}
        self.commands.append(record)
        try:
            self.wait("command_ack", lambda: self.brain.command(cid).acked, 15)
            out.line(f"agent -> brain: command_ack after {(time.monotonic() - started) * 1000:.0f} ms", tag="command",
                     code="34")
            rec = self.brain.wait_for_command(cid, timeout=self.remaining(20))
        except (DemoFailed, TimeoutError) as exc:
            record.update(status="no result", error=str(exc))
            self.check(f"{engine} retry_task round trip", False, str(exc))
            return None
        record.update(status=rec.status, result=rec.result, error=rec.error,
                      round_trip_ms=round((time.monotonic() - started) * 1000))
        out.line(f"agent -> brain: command_result {rec.status} after {record['round_trip_ms']} ms: "
                 f"{rec.result if rec.result is not None else rec.error}", tag="command",
                 code="32" if rec.status == "completed" else "31")
        if not self.check(f"{engine} retry_task completed", rec.status == "completed", rec.error or ""):
            return None
        new_id = (rec.result or {}).get("new_task_id") or task_id
        try:
            self.wait(f"the retried task {new_id} to succeed", lambda: self._state(engine, new_id) == "SUCCESS", 20)
        except DemoFailed as exc:
            self.check(f"{engine} retried task succeeded", False, str(exc))
            return new_id
        kinds = [e["kind"] for e in self.brain.events(engine=engine, task_id=new_id)]
        out.line(f"the new task {new_id[:8]} ran: {' -> '.join(kinds[-3:])}", tag="command", code="32")
        self.check(f"{engine} retried task succeeded", True, f"new task {new_id}")
        return new_id

    # -- verdict ---------------------------------------------------------------------------------
    def verify(self, engines: Sequence[str]) -> None:
        for (engine, task_id), (name, state) in self.expected.items():
            got = self._state(engine, task_id)
            if name.endswith("(retry)") or (engine, task_id) in {("rq", c["task_id"]) for c in self.commands}:
                continue  # checked by the round trip (an RQ retry reuses the job id)
            self.check(f"{engine} {name} {task_id[:8]} is {state}", got == state, f"brain says {got}")
        flaky = [t for (e, t), (n, _) in self.expected.items() if n == "demo.flaky"]
        kinds = [e["kind"] for e in self.brain.events(engine="celery", task_id=flaky[0])] if flaky else []
        self.check("demo.flaky retried itself (task.retried) then succeeded", "task.retried" in kinds, str(kinds))
        stored = repr([t.get("kwargs") for t in self.brain.tasks() if t.get("task_name") in ("demo.charge", "dq_charge")])
        self.check("the card number never reached the brain (redacted by the agent)", CARD not in stored, stored[:120])
        got = self.brain.events(engine="celery", kind="worker.offline")
        self.check("the celery agent reported worker.offline on shutdown", bool(got), f"{len(got)} event(s)")
        if self.transport == "longpoll":
            uploads = self.brain.longpoll.requests["events"]
            self.check("the workers' agents delivered over long-poll", uploads > 0, f"{uploads} uploads")
        if "dramatiq" in engines:
            online = {e["data"].get("pid") for e in self.brain.events(engine="dramatiq", kind="worker.online")}
            offline = {e["data"].get("pid") for e in self.brain.events(engine="dramatiq", kind="worker.offline")}
            sessions = self.brain.agent(self.agents["dramatiq"].agent_id)["sessions"]
            self.check("dramatiq's 2 worker processes shared one agent session, and both said goodbye",
                       len(online) == 2 and offline == online and sessions == 1,
                       f"online {sorted(online)}, offline {sorted(offline)}, sessions {sessions}")
            flaky_ids = [t for (_, t), (n, _) in self.expected.items() if n == "dq_flaky"]
            kinds = [ev["kind"] for t in flaky_ids for ev in self.brain.events(engine="dramatiq", task_id=t)]
            self.check("dq_flaky was retried by Dramatiq (task.retried) then succeeded", "task.retried" in kinds,
                       str(kinds))
        from .diagnostics import buffer_status

        for engine in engines:
            status = buffer_status(self.tmp / f"home-{engine}")
            left = [b for b in status["buffers"] if b.get("location") == "home"]
            depth = sum(b.get("depth", 0) for b in left)
            self.check(f"the {engine} agent delivered everything before exiting (local buffer empty)",
                       depth == 0 and not status["problems"], f"{depth} row(s) left; {status['problems']}")

    def summary(self) -> int:
        out = self.out
        out.title("summary")
        events = self.brain.events()
        by_engine = Counter(e.get("engine") for e in events)
        out.line(f"events delivered to the brain: {len(events)} ({dict(by_engine)})")
        for engine, n in sorted(Counter((e.get("engine"), e.get("kind")) for e in events).items()):
            out.line(f"  {engine[0]:<7} {engine[1]:<18} {n}")
        for engine in [e for e in self.agents if e != "beat"]:
            states = Counter(t["state"] for t in self.brain.tasks(engine=engine))
            out.line(f"tasks by state ({engine}): {dict(sorted(states.items()))}")
        for c in self.commands:
            out.line(f"command {c['action']} ({c['engine']}) {c['command_id'][:8]}: {c.get('status')} "
                     f"in {c.get('round_trip_ms', '-')} ms, result {c.get('result') or c.get('error')}")
        failed = [c for c in self.checks if not c[1]]
        for name, ok, detail in self.checks:
            mark = out._c("32", "PASS") if ok else out._c("31", "FAIL")
            out.line(f"{mark} {name}" + ("" if ok else f": {detail}"))
        verdict = "all checks passed" if not failed else f"{len(failed)} check(s) failed"
        out.line(f"{verdict} in {time.monotonic() - out.t0:.1f} s", code="1")
        if failed:
            for name in self.workers.procs:
                out.line(f"last lines of the {name} worker log:\n{self.workers.tail(name)}")
        return 0 if not failed else 1

    def close(self) -> None:
        clean = self.workers.reap()
        if not clean:
            self.out.line("some worker processes had to be killed at the end", tag="cleanup")
        if self.brain is not None:
            with contextlib.suppress(Exception):
                self.brain.close()
        if self.redis_url:
            self._clean_redis()
        shutil.rmtree(self.tmp, ignore_errors=True)
        for key in ("Z4J_DEMO_BROKER", "Z4J_DEMO_BROKER_DIR", "Z4J_DEMO_QUEUE", "Z4J_DEMO_DRAMATIQ_NAMESPACE"):
            os.environ.pop(key, None)

    def _clean_redis(self) -> None:
        try:
            import redis

            conn = redis.Redis.from_url(self.redis_url, socket_timeout=2)
            keys = set(conn.scan_iter(match=f"*{self.queue}*", count=1000))
            keys |= set(conn.scan_iter(match=f"*demo-{self.tag}*", count=1000))
            for job_id in self._rq_job_ids:
                keys |= set(conn.scan_iter(match=f"rq:*{job_id}*", count=1000))
            for task_key in [t for (e, t) in self.expected if e == "celery"]:
                keys.add(f"celery-task-meta-{task_key}".encode())
            if keys:
                conn.delete(*keys)
            conn.srem("rq:queues", f"rq:queue:{self.queue}")
            conn.close()
        except Exception as exc:  # noqa: BLE001 - best effort; a few stale demo keys are harmless
            self.out.line(f"could not remove the demo's Redis keys ({type(exc).__name__}); they are harmless",
                          tag="cleanup")


def _has_dramatiq() -> bool:
    import importlib.util

    return importlib.util.find_spec("dramatiq") is not None


def _quiet_logging() -> None:
    # The brain and agents log at info; the demo's own lines are the story, so keep only warnings
    # (unless `z4j-bare --log-level ... demo` already chose a level).
    from .logs import has_console, log_to_stderr

    if not has_console():
        log_to_stderr("warning")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="z4j-bare demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-redis", action="store_true", help="use the embedded filesystem broker even if Redis runs")
    parser.add_argument("--no-color", action="store_true", help="plain output (also when NO_COLOR is set)")
    parser.add_argument("--transport", choices=("auto", "ws", "longpoll"), default="auto",
                        help="the workers' agents' transport (the local brain serves both)")
    args = parser.parse_args(list(argv or []))
    _quiet_logging()
    demo = Demo(use_redis=not args.no_redis, out=Console(color=False if args.no_color else None),
                transport=args.transport)

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return demo.run()
    except DemoFailed as exc:
        demo.out.line(f"demo failed: {exc}", tag="error", code="31")
        with contextlib.suppress(Exception):
            demo.summary()
        return 1
    except KeyboardInterrupt:
        demo.out.line("interrupted; cleaning up", tag="error", code="31")
        return 130
    finally:
        demo.close()
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
