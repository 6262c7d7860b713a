"""Real ``dramatiq`` commands (supervisor, worker processes, the z4j agent process) for the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from waiting import wait_for  # the suite's one polling wait, offered here to the dramatiq tests

from dramatiq_app.defs import AMQP_URL, NS, REDIS_URL, _client

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = TESTS_DIR.parent
DRAMATIQ_BIN = Path(sys.executable).with_name("dramatiq")


def command_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO_DIR)])
    env["Z4J_TEST_DQ_NS"] = NS
    env.update(extra or {})
    return env


class Command:
    """One ``dramatiq <module> -p N -t T -Q <queues>`` with its log in a file."""

    def __init__(self, module: str, queues: list[str], env: Mapping[str, str], log_path: Path, *,
                 processes: int = 2, threads: int = 2, extra_args: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        cmd = [str(DRAMATIQ_BIN), module, "-p", str(processes), "-t", str(threads), *extra_args, "-Q", *queues]
        self.proc = subprocess.Popen(cmd, env=command_env(env), cwd=REPO_DIR, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM to the supervisor only (as ``docker stop`` does); it relays to its children."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self._kill_group()
        self._log.close()
        return self.proc.returncode

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def marker_value(key: str) -> int:
    value = _client.get(f"{NS}:marker:{key}")
    return int(value) if value is not None else 0


def marker_exists(key: str) -> bool:
    return bool(_client.exists(f"{NS}:marker:{key}"))


def undelivered(home: Path) -> int:
    """Records left in a stopped command's buffers: rows not yet acked plus unread spool bytes."""
    import sqlite3

    left = 0
    for path in home.glob("buffer-*-dramatiq-*.sqlite"):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            left += conn.execute("SELECT COUNT(*) FROM entries WHERE kind != '~'").fetchone()[0]
            offsets = dict(conn.execute("SELECT name, offset FROM spool").fetchall())
        finally:
            conn.close()
        spool = path.with_name(path.name + ".spool")
        for log in spool.glob("*.log") if spool.is_dir() else ():
            left += log.stat().st_size - offsets.get(log.name, 0)
    return left


def assert_clean_log(log: str) -> None:
    """No capture error, swallowed agent error or failed agent start in a command's log."""
    for problem in ("safety.swallowed", "capture_off", "Unexpected failure", "agent_not_started",
                    "no_agent_process"):
        at = log.find(problem)
        assert at < 0, f"{problem!r} in the log:\n{log[max(0, at - 3000):at + 3000]}"


def flush_namespace() -> None:
    for key in _client.scan_iter(match=f"{NS}*"):
        _client.delete(key)
    for key in _client.scan_iter(match="dramatiq:aborts:*"):
        _client.delete(key)


__all__ = ["AMQP_URL", "NS", "REDIS_URL", "Command", "assert_clean_log", "command_env", "flush_namespace", "marker_exists", "marker_value",
           "undelivered", "wait_for"]
