"""`make demo` end to end, as a user runs it: a subprocess that must finish by itself, green."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run_demo(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
    env["TMPDIR"] = str(tmp_path)  # the demo's temp Z4J_HOME must land (and vanish) here
    proc = subprocess.run([sys.executable, "-m", "z4j_bare", "demo", "--no-color", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=90, check=False)
    return proc


def _assert_clean_run(proc, tmp_path):
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    assert "all checks passed" in out and " FAIL " not in out
    # The story is all there: events, the retry round trip, the summary.
    for needle in ("task.succeeded", "task.failed", "task.retried", "command retry_task",
                   "command_ack after", "command_result completed", "events delivered to the brain"):
        assert needle in out, needle
    assert "\x1b[" not in out  # not a TTY: plain lines
    home = re.search(r"Z4J_HOME for the agents: (\S+)\)", out).group(1)
    assert Path(home).parent == tmp_path and not Path(home).exists()
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    leftovers = subprocess.run(["pgrep", "-f", home], capture_output=True, text=True, check=False).stdout.split()
    assert leftovers == []


def test_demo_with_redis_celery_and_rq(tmp_path):
    proc = _run_demo(tmp_path)
    _assert_clean_run(proc, tmp_path)
    assert "RQ worker joins" in proc.stdout and "tasks by state (rq)" in proc.stdout
    # a dramatiq command: two worker processes, one agent session, a retry by reference from the brain
    assert "tasks by state (dramatiq)" in proc.stdout and "command retry_task (dramatiq)" in proc.stdout
    assert "PASS dramatiq's 2 worker processes shared one agent session" in proc.stdout
    # celery beat's schedule appears in the brain and the operator's trigger runs on the worker
    assert "celery beat: its schedule in the brain" in proc.stdout and "makes it APPLIED" in proc.stdout


def test_demo_on_the_embedded_filesystem_broker(tmp_path):
    proc = _run_demo(tmp_path, "--no-redis")
    _assert_clean_run(proc, tmp_path)
    assert "filesystem:// broker" in proc.stdout and "(rq)" not in proc.stdout


def test_demo_over_longpoll(tmp_path):
    proc = _run_demo(tmp_path, "--transport", "longpoll")
    _assert_clean_run(proc, tmp_path)
    assert "the workers' agents use transport=longpoll" in proc.stdout
    assert "PASS the workers' agents delivered over long-poll" in proc.stdout
