"""Helpers shared by the RQ tests and the bench: real Redis, real ``rq worker`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

import redis

# Z4J_TEST_REDIS points the tests at another Redis (parallel runs on one machine).
_REDIS = os.environ.get("Z4J_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_URL = os.environ.get("Z4J_TEST_RQ_REDIS_URL", _REDIS + "/11")
TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = TESTS_DIR.parent
RQ_BIN = Path(sys.executable).with_name("rq")


def connection() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def unique_queue(prefix: str) -> str:
    return f"z4jtest-{prefix}-{uuid.uuid4().hex[:8]}"


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO_DIR)])
    env.update(extra or {})
    return env


def worker_cmd(worker_class: str, queues: list[str], *, burst: bool = True, name: str | None = None) -> list[str]:
    cmd = [str(RQ_BIN), "worker", "--url", REDIS_URL, "--worker-class", worker_class,
           "--logging_level", "WARNING", "--job-monitoring-interval", "1"]
    if burst:
        cmd.append("--burst")
    if name:
        cmd += ["--name", name]
    return cmd + queues


def run_burst(worker_class: str, queues: list[str], env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(worker_cmd(worker_class, queues), env=worker_env(env), cwd=REPO_DIR,
                          capture_output=True, text=True, timeout=timeout)


def start_worker(worker_class: str, queues: list[str], env: Mapping[str, str], name: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(worker_cmd(worker_class, queues, burst=False, name=name), env=worker_env(env),
                            cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_worker(proc: subprocess.Popen, timeout: float = 15) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def flush_queues(conn: redis.Redis, names: list[str]) -> None:
    """Delete every key a test queue left behind (jobs, registries, results)."""
    for name in names:
        for key in conn.scan_iter(match=f"rq:*{name}*"):
            conn.delete(key)
        conn.srem("rq:queues", f"rq:queue:{name}")
