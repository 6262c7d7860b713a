"""Start/stop real ``celery worker`` subprocesses for the adapter tests and the bench."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

# Z4J_TEST_REDIS points the tests at another Redis (parallel runs on one machine).
_REDIS = os.environ.get("Z4J_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_BROKER = _REDIS + "/9"
AMQP_BROKER = os.environ.get("Z4J_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND = _REDIS + "/10"
TESTS_DIR = str(Path(__file__).resolve().parent.parent)


def unique_queue(prefix: str = "z4jq") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Worker:
    def __init__(self, *, queue: str, broker: str, pool: str = "prefork", concurrency: int = 2, boot: str = "worker_ready",
                 env: dict | None = None, home: str, events: bool = False, extra: list[str] | None = None,
                 log_path: str | None = None) -> None:
        self.queue = queue
        self.broker = broker
        self.nodename = f"w-{queue}@z4jtest"
        self.log_path = log_path or os.path.join(home, "worker.log")
        cmd = [sys.executable, "-m", "celery", "-A", "celery_app.tasks", "worker", "-P", pool, "-Q", queue,
               "-n", self.nodename, "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"]
        if pool != "solo":
            cmd += ["-c", str(concurrency)]
        if events:
            cmd.append("-E")
        cmd += extra or []
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
        full_env.update(env or {})
        full_env.update(Z4J_HOME=home, Z4J_TEST_BOOT=boot, Z4J_TEST_QUEUE=queue, Z4J_TEST_BROKER=broker,
                        Z4J_TEST_BACKEND=BACKEND, PYTHONPATH=TESTS_DIR, Z4J_HEARTBEAT_SECONDS="2")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text()[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        clean_queue(self.broker, self.queue)
        return self.proc.returncode


def clean_queue(broker: str, queue: str) -> None:
    from kombu import Connection

    try:
        with Connection(broker, connect_timeout=2) as conn:
            channel = conn.default_channel
            if broker.startswith("redis"):
                client = channel.client
                keys = client.keys(queue + "*")  # kombu keeps one list per priority step
                if keys:
                    client.delete(*keys)
            else:
                channel.queue_delete(queue)
    except Exception:  # noqa: BLE001 - best effort
        pass
