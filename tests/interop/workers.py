"""Real Celery / RQ worker subprocesses running our agent, for the real-brain interop tests and
``bench/bench_real_brain.py``.

Redis databases of their own (12 Celery broker, 13 Celery results and markers, 14 RQ), so a
concurrent run of the LocalBrain suites (dbs 9-11, which they flush) never touches ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Z4J_TEST_REDIS points the tests at another Redis (parallel runs on one machine).
_REDIS = os.environ.get("Z4J_TEST_REDIS", "redis://127.0.0.1:6379")
CELERY_BROKER = _REDIS + "/12"
CELERY_BACKEND = _REDIS + "/13"
RQ_REDIS_URL = _REDIS + "/14"
TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = TESTS_DIR.parent
RQ_BIN = Path(sys.executable).with_name("rq")

# What our adapters advertise in hello (docs/celery.md, docs/rq.md): prefork -> pool resize, no
# restart_worker (worker_pool_restarts is off); retry_by_reference_v1 attests safe retries.
CELERY_PREFORK_CAPS = sorted([
    "add_consumer", "bulk_retry", "cancel_consumer", "cancel_task", "pool_grow", "pool_shrink",
    "purge_queue", "rate_limit", "retry_by_reference_v1", "retry_task", "submit_task",
])  # fmt: skip
RQ_CAPS = sorted([
    "bulk_retry", "cancel_task", "list_dead_letters", "purge_queue", "requeue_dead_letter",
    "retry_by_reference_v1", "retry_task", "submit_task",
])  # fmt: skip


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR / "interop" / "hostlog"), str(TESTS_DIR), str(REPO_DIR)])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class _Proc:
    """A worker subprocess in its own process group, output to a log file; stop() is idempotent."""

    def __init__(self, cmd: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            env=_env(env),
            cwd=str(REPO_DIR),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(
                self.proc.pid, signal.SIGKILL
            )  # pool children left behind, if any
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


class CeleryWorker(_Proc):
    """``celery -A interop.celery_tasks worker -P prefork -c 2`` (no -E) on its own queue."""

    def __init__(
        self,
        *,
        queue: str,
        agent_env: Mapping[str, str],
        home: Path,
        concurrency: int = 2,
        boot: str = "worker_init",
        loglevel: str = "warning",
    ) -> None:
        self.queue = queue
        self.nodename = f"{queue}@interop"
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "interop.celery_tasks",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "-Q",
            queue,
            "-n",
            self.nodename,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            loglevel,
        ]
        env = {
            **agent_env,
            "Z4J_HOME": str(home),
            "Z4J_IT_QUEUE": queue,
            "Z4J_IT_BOOT": boot,
            "Z4J_IT_BROKER": CELERY_BROKER,
            "Z4J_IT_BACKEND": CELERY_BACKEND,
        }
        super().__init__(cmd, env, Path(home) / "celery-worker.log")

    def stop(self, timeout: float = 20.0) -> int | None:
        code = super().stop(timeout)
        clean_celery_queue(self.queue)
        return code


class RqWorker(_Proc):
    """``rq worker --worker-class z4j_rq.Worker|SimpleWorker`` (long-running, not burst)."""

    def __init__(
        self,
        *,
        worker_class: str,
        queues: list[str],
        agent_env: Mapping[str, str],
        home: Path,
        name: str | None = None,
    ) -> None:
        self.queues = list(queues)
        self.name = name or unique("rqw")
        cmd = [
            str(RQ_BIN),
            "worker",
            "--url",
            RQ_REDIS_URL,
            "--worker-class",
            worker_class,
            "--logging_level",
            "WARNING",
            "--job-monitoring-interval",
            "1",
            "--name",
            self.name,
            *self.queues,
        ]
        super().__init__(
            cmd,
            {**agent_env, "Z4J_HOME": str(home), "Z4J_STOP_TIMEOUT": "10"},
            Path(home) / "rq-worker.log",
        )


def celery_producer():
    """A publishing-only Celery app (no agent: the test process only sends by name)."""
    from celery import Celery

    app = Celery("z4j-interop-producer", broker=CELERY_BROKER, backend=CELERY_BACKEND)
    app.conf.broker_connection_retry_on_startup = True
    return app


def clean_celery_queue(queue: str) -> None:
    """Delete the queue's lists (kombu keeps one per priority step) and its binding sets."""
    import redis

    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(CELERY_BROKER)
        keys = [*client.scan_iter(match=queue + "*")]
        keys += [f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
        client.delete(*keys)


def clean_rq_queues(names: list[str]) -> None:
    """Delete the queues, their registries, and the jobs (and results) that came from them."""
    import redis

    client = redis.Redis.from_url(RQ_REDIS_URL)
    origins = {name.encode() for name in names}
    for key in client.scan_iter(match="rq:job:*"):
        if client.type(key) == b"hash" and client.hget(key, "origin") in origins:
            job_id = key.decode().removeprefix("rq:job:")
            client.delete(key, f"rq:results:{job_id}", f"rq:job:{job_id}:dependents")
    for name in names:
        for key in client.scan_iter(match=f"rq:*{name}*"):
            client.delete(key)
        client.srem("rq:queues", f"rq:queue:{name}")


# ---------------------------------------------------------------------------------------------
# the Celery workload shared by the real-brain test, the LocalBrain comparison and the bench


@dataclass(frozen=True)
class PlannedTask:
    index: int
    task_id: str
    name: str
    args: tuple
    final: str  # expected final state, lower-case
    retries: bool  # goes through self.retry() once


# One slot of ten: 6 succeed, 2 fail, 1 retries then succeeds, 1 retries and exhausts max_retries=1.
_PATTERN = (
    ("interop.add", "success", False), ("interop.add", "success", False), ("interop.add", "success", False),
    ("interop.add", "success", False), ("interop.add", "success", False), ("interop.add", "success", False),
    ("interop.fail", "failure", False), ("interop.fail", "failure", False),
    ("interop.retry_then_ok", "success", True), ("interop.retry_exhausted", "failure", True),
)  # fmt: skip


def plan_celery_workload(n: int, prefix: str) -> list[PlannedTask]:
    """``n`` tasks with ids ``<prefix>-<index>``: two runs with the same ``n`` differ only in prefix."""
    plan = []
    for i in range(n):
        name, final, retries = _PATTERN[i % len(_PATTERN)]
        args = (
            (f"boom {i}",)
            if name == "interop.fail"
            else (i, 1)
            if name == "interop.add"
            else (i,)
        )
        plan.append(PlannedTask(i, f"{prefix}-{i:05d}", name, args, final, retries))
    return plan


def publish(app: Any, queue: str, plan: list[PlannedTask]) -> None:
    with app.producer_or_acquire() as producer:
        for task in plan:
            app.send_task(
                task.name,
                args=task.args,
                task_id=task.task_id,
                queue=queue,
                producer=producer,
            )


def expected_counts(plan: list[PlannedTask]) -> Counter:
    return Counter(t.final for t in plan)


def wait_until(
    check: Callable[[], Any],
    timeout: float,
    what: Callable[[], str] | str,
    poll: float = 0.5,
) -> Any:
    """Poll ``check`` until it returns something truthy; TimeoutError with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(what() if callable(what) else what)
        time.sleep(poll)
