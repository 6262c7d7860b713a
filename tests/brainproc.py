"""The local brain in a process of its own (``python -m z4j_bare.testing``), for faults a thread
cannot show: SIGSTOP freezes it while the kernel keeps its sockets (no FIN, no RST), exactly like
a frozen host or a path that black-holes packets.

    with BrainProcess(tmp_path) as brain:
        env = brain.env                 # Z4J_BRAIN_URL, Z4J_TOKEN, ... of the agent it minted
        brain.freeze(); brain.thaw()
        brain.event_count()
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

REPO_DIR = Path(__file__).resolve().parents[1]


class BrainProcess:
    def __init__(self, workdir: Path, *extra_args: str) -> None:
        self.workdir = Path(workdir)
        self.db_path = self.workdir / "brain.sqlite"
        self.log_path = self.workdir / "brain.out"
        self._args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.frozen = False

    def __repr__(self) -> str:
        return f"BrainProcess(pid={self.pid}, url={self.env.get('Z4J_BRAIN_URL')!r}, frozen={self.frozen})"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 30.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "z4j_bare.testing", "--port", "0", "--db", str(self.db_path), *self._args],
                cwd=str(REPO_DIR), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            env = self._exports()
            if "Z4J_HMAC_SECRET" in env:
                self.env = env
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the local brain process did not start:\n{self.output()}")

    def _exports(self) -> dict[str, str]:
        env = {}
        for line in self.output().splitlines():
            if line.startswith("export ") and "=" in line:
                name, _, value = line[len("export "):].partition("=")
                env[name] = value.strip("'")
        return env

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def freeze(self) -> None:
        """SIGSTOP: the process stops; its sockets stay open and silent."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def event_count(self) -> int:
        return self._query("SELECT count(*) FROM events")[0][0]

    def task_ids(self, engine: str, kind: str) -> set[str]:
        """Tasks with an event of ``kind`` (the brain writes its task table lazily; events at once)."""
        return {row[0] for row in self._query("SELECT task_id FROM events WHERE engine = ? AND kind = ?",
                                              (engine, kind))}

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)) as conn:
            return conn.execute(sql, params).fetchall()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
