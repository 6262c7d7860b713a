"""A script that calls stop() exits at once after it returns (issue 21, item 4).

Real processes: the brain in its own process (so SIGSTOP can freeze it with its sockets open) and
a bare agent script; the test times from the script's "returned" line to the process's end.
Before the fix a frozen or busy brain kept the script alive ~2 s more (the clean close waited for
the brain's close frame out of reach of abort(), and the exit hook's stop() joined the I/O thread
again), and a running command kept it alive until the command finished (ThreadPoolExecutor's
workers are joined at exit).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brainproc import REPO_DIR, BrainProcess

TESTS_DIR = Path(__file__).resolve().parent
# Interpreter teardown takes 0.05-0.2 s here; the cases this test guards against took 1.5-30 s.
EXIT_BOUND_SECONDS = 0.5


def _agent(brain: BrainProcess, home: Path, stop_timeout: float) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
    env.update(brain.env, Z4J_HOME=str(home), PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_DIR)]))
    return subprocess.Popen([sys.executable, str(TESTS_DIR / "exit_agent.py"), str(stop_timeout)], env=env,
                            cwd=str(REPO_DIR), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _read_line(proc: subprocess.Popen[str], want: str, timeout: float = 60.0) -> float:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    seen = time.monotonic()
    if line != want:
        proc.kill()
        raise AssertionError(f"expected {want!r} from the agent script, got {line!r}:\n{proc.stderr.read()[-3000:]}")
    return seen


def _exit_after_stop(proc: subprocess.Popen[str], command: str) -> tuple[float, float]:
    """Send ``command``; (seconds stop() took, seconds from its return to the process's end)."""
    assert proc.stdin is not None
    asked = time.monotonic()
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    returned = _read_line(proc, "returned")
    try:
        proc.wait(40)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    ended = time.monotonic()
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    return returned - asked, ended - returned


@pytest.mark.parametrize("case", ["frozen_brain", "running_command"])
def test_a_script_exits_at_once_after_stop_returns(tmp_path, case):
    with BrainProcess(tmp_path / "brain") as brain:
        proc = _agent(brain, tmp_path / "home", stop_timeout=1.0)
        try:
            _read_line(proc, "ready")
            if case == "frozen_brain":
                brain.freeze()  # the close handshake and the drain now wait for a peer that never answers
            stop_took, linger = _exit_after_stop(proc, "command" if case == "running_command" else "stop")
        finally:
            if proc.poll() is None:
                proc.kill()
            if brain.frozen:
                brain.thaw()
    assert stop_took < 1.0 + 2.0, f"stop(1.0) took {stop_took:.2f} s"
    assert linger < EXIT_BOUND_SECONDS, f"the script lived {linger:.2f} s after stop() returned ({case})"
