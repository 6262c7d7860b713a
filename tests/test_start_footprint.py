"""What the agent loads into the process it lives in (issue 22: the RQ fork, a cron script's start).

An rq worker's parent forks a work-horse per job, and every MiB it carries is copied into each
fork's page tables; a cron script pays every import before its own work. Modules needed only on
a rare path stay out of a connected agent's process until that path runs: tenacity until a
connect fails, difflib until a configuration error names a near miss, pickletools until a job's
function is read from its pickle, the redaction pattern checker until the user configures
patterns. The sizes are in docs/performance.md; this guards the set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from brainproc import REPO_DIR, BrainProcess

TESTS_DIR = Path(__file__).resolve().parent
ON_A_RARE_PATH = ("tenacity", "difflib", "pickletools", "z4j_bare.redaction_safety", "z4j_bare.redaction_regex")


def _loaded(proc: subprocess.Popen[str]) -> set[str]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("["), f"agent script said {line!r}:\n{proc.stderr.read()[-3000:] if line == '' else ''}"
    names = set(json.loads(line))
    return names | {name.split(".")[0] for name in names}


def test_a_connected_agent_leaves_rare_path_modules_unloaded_until_needed(tmp_path):
    with BrainProcess(tmp_path / "brain") as brain:
        env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
        env.setdefault("Z4J_TEST_REDIS", "redis://127.0.0.1:6379")
        env.update(brain.env, Z4J_HOME=str(tmp_path / "home"),
                   PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_DIR)]))
        proc = subprocess.Popen([sys.executable, str(TESTS_DIR / "footprint_agent.py")], env=env, cwd=str(REPO_DIR),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            connected = _loaded(proc)
            assert "websocket" in connected  # the script reached the brain: the probe sees real loads
            assert not connected & set(ON_A_RARE_PATH), sorted(connected & set(ON_A_RARE_PATH))
        except BaseException:
            proc.kill()
            raise
    # The brain is gone: the agent's first failed connect brings tenacity in to pace the retries.
    try:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert "tenacity" in _loaded(proc)
        proc.wait(30)
    finally:
        proc.kill()
