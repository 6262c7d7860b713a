"""Shared plumbing for the side-by-side bench: interpreters, the local brain process, workers."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "bench" / "suite"
APPS = SUITE / "apps"
PROBES = SUITE / "probes"
OUR_PY = Path(sys.executable)
# Z4J_BENCH_REDIS (else the tests' Z4J_TEST_REDIS) names the Redis server, so a bench run and
# someone else's tests or bench on the same machine never share keys; dbs 7 and 8 of it.
REDIS_SERVER = (os.environ.get("Z4J_BENCH_REDIS") or os.environ.get("Z4J_TEST_REDIS")
                or "redis://127.0.0.1:6379").rstrip("/")
CELERY_BROKER = f"{REDIS_SERVER}/7"   # the team's tests use dbs 9-14
RQ_REDIS = f"{REDIS_SERVER}/8"


def ref_python() -> Path:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import refagent
    finally:
        sys.path.pop(0)
    return refagent.ref_python()


def load_realbrain():
    import importlib.util

    path = REPO / "tests" / "interop" / "realbrain.py"
    spec = importlib.util.spec_from_file_location("z4j_bench_realbrain", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    import sqlite3

    return {"nproc": os.cpu_count(), "cpu": model, "mem": mem, "load": os.getloadavg(),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "kernel": platform.release(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}


# Bytecode of every process the bench starts, kept here: an installed package has its .pyc (pip
# compiles the reference's at install), while ours is an editable checkout that
# PYTHONDONTWRITEBYTECODE (set on some machines) would make every process compile from source.
PYCACHE = REPO / ".bench" / "pycache"


def clean_env(extra: dict[str, str] | None = None, pythonpath: str | None = str(APPS)) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("Z4J_", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"))}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env["PYTHONUNBUFFERED"] = "1"
    env["Z4J_BENCH_RQ_REDIS"] = RQ_REDIS  # the bare probes' Redis (bench/suite/probes)
    env.update(extra or {})
    return env


def outside_cwd() -> str:
    """A working directory outside the checkout: the reference's ``z4j_bare`` must never resolve to ours."""
    path = Path(tempfile.gettempdir()) / "z4j-bench-cwd"
    path.mkdir(exist_ok=True)
    return str(path)


class BrainProc:
    """bench/suite/brainserver.py (the local reference brain) in its own process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([str(OUR_PY), str(SUITE / "brainserver.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env=clean_env(pythonpath=None), cwd=str(REPO))
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"local brain did not start: {line!r}")
        self.url = line.split()[1]
        self._lock = threading.Lock()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("local brain process died")
        return json.loads(line)

    def cpu_seconds(self) -> float:
        """CPU (user + system) the brain process has used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def mint(self, name: str = "bench") -> dict[str, str]:
        return self.call("mint", name=name, project="bench")["env"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def agent_env(agent: str, creds: dict[str, str] | None, home: str) -> dict[str, str]:
    """Z4J_* for a worker of ``agent`` (ours | ref | none)."""
    env = {"Z4J_BENCH_AGENT": agent, "Z4J_HOME": home}
    if agent != "none" and creds:
        env.update(creds)
    if agent == "ref":
        env["Z4J_DEV_MODE"] = "1"  # the reference refuses plain http without it (loopback lab brain)
        env["Z4J_RQ_REDIS_URL"] = RQ_REDIS
    return env


def python_for(agent: str, ref_py: Path | None) -> Path:
    return ref_py if agent == "ref" else OUR_PY


class CeleryWorker:
    """``celery -A benchcelery worker -P prefork -c 2`` from the agent's own venv."""

    def __init__(self, agent: str, env: dict[str, str], ref_py: Path | None, *, queue: str,
                 concurrency: int = 2, events: bool = False, log_dir: str) -> None:
        exe = python_for(agent, ref_py).with_name("celery")
        self.queue = queue
        cmd = [str(exe), "-A", "benchcelery", "worker", "-P", "prefork", "-c", str(concurrency), "-Q", queue,
               "-n", f"{queue}@bench", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
        if events:
            cmd.append("-E")
        self.log_path = os.path.join(log_dir, f"celery-{agent}-{queue}.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        full = clean_env({**env, "Z4J_BENCH_QUEUE": queue, "Z4J_BENCH_BROKER": CELERY_BROKER,
                          "Z4J_BENCH_COUNTER": CELERY_BROKER})
        self.proc = subprocess.Popen(cmd, env=full, cwd=outside_cwd(), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text()[-3000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        clean_celery_queue(self.queue)


def clean_celery_queue(queue: str) -> None:
    import redis

    client = redis.Redis.from_url(CELERY_BROKER)
    keys = client.keys(queue + "*")
    if keys:
        client.delete(*keys)


def celery_producer():
    from celery import Celery

    return Celery("z4jbench-producer", broker=CELERY_BROKER)


def publish_count_tasks(app: Any, queue: str, key: str, n: int) -> None:
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            app.send_task("bench.count", args=(key,), queue=queue, producer=producer, ignore_result=True)


def wait_counter(key: str, n: int, timeout: float, what: str, worker: Any = None) -> float:
    """Poll the Redis counter every 2 ms until it reaches n; returns perf_counter at that moment."""
    import redis

    client = redis.Redis.from_url(CELERY_BROKER)
    deadline = time.monotonic() + timeout
    while int(client.get(key) or 0) < n:
        if time.monotonic() > deadline:
            tail = worker.log() if worker is not None else ""
            raise RuntimeError(f"{what}: {client.get(key)} of {n} tasks done after {timeout:.0f} s\n{tail}")
        time.sleep(0.002)
    return time.perf_counter()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def rq_worker_cmd(agent: str, ref_py: Path | None, queue: str, *, burst: bool) -> list[str]:
    exe = python_for(agent, ref_py).with_name("rq")
    cls = {"ours": "z4j_rq.Worker", "ref": "benchrq_ref.Worker", "none": "rq.worker.Worker"}[agent]
    cmd = [str(exe), "worker", "--url", RQ_REDIS, "--worker-class", cls, "--logging_level", "WARNING",
           "--name", unique(f"bench-{agent}")]
    if burst:
        cmd.append("--burst")
    return [*cmd, queue]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
