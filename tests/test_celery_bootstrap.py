"""install_agent at import of a Celery app module: an agent in workers only, unless opted in.

Every process that imports the app runs that line: the worker (before worker_init), a web
server, `celery inspect`, beat. Outside a worker it starts nothing (no thread, no socket, no
buffer file); in `celery worker` it starts at worker_init (test_celery_worker's "import" boot).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from celery_app.harness import REDIS_BROKER, TESTS_DIR

SECRET = "c2VjcmV0LWZvci10aGUtbG9nZ2luZy10ZXN0cy0wMTIzNDU2Nzg5"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
    env.update(Z4J_HOME=str(home), Z4J_BRAIN_URL="http://127.0.0.1:9", Z4J_TOKEN="tok_" + "A" * 40,
               Z4J_HMAC_SECRET=SECRET, Z4J_PROJECT_ID="bootstrap", Z4J_TEST_BOOT="import",
               Z4J_TEST_BROKER=REDIS_BROKER, PYTHONPATH=TESTS_DIR)
    return env


WEB_SERVER = textwrap.dedent("""
    import logging, sys, threading
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    import celery_app.tasks                 # the app module calls install_agent at import
    from z4j_bare.agent import current_runtime
    print(current_runtime(), threading.active_count())
""")


def test_importing_the_app_outside_a_worker_starts_no_agent(tmp_path):
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-c", WEB_SERVER], env=_env(home), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "1"]  # no runtime, no thread
    assert ("INFO z4j_bare.agent agent.waiting_for_worker: not in a Celery worker: the agent starts at worker_init "
            "if this process becomes one (pass outside_worker=True to CeleryEngineAdapter to run it here)"
            ) in proc.stderr
    assert not home.exists()  # no buffer, no lock file


def test_celery_inspect_with_the_app_starts_no_agent(tmp_path):
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "celery_app.tasks", "inspect", "ping",
                           "--timeout", "1"], env=_env(home), capture_output=True, text=True, timeout=60)
    assert "No nodes replied" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert not home.exists()
    assert "z4j" not in proc.stdout + proc.stderr.replace("celery_app", "")


def test_outside_worker_is_an_explicit_opt_in(tmp_path):
    script = textwrap.dedent("""
        from celery import Celery
        from z4j_bare import install_agent
        from z4j_celery import CeleryEngineAdapter
        app = Celery("producer", broker="memory://")
        runtime = install_agent(engines=[CeleryEngineAdapter(celery_app=app, outside_worker=True)])
        import time
        deadline = time.monotonic() + 10  # the I/O thread leaves INIT as soon as it runs
        while runtime.state.value == "init" and time.monotonic() < deadline:
            time.sleep(0.01)
        print(runtime.state.value != "init", runtime.engines["celery"].outside_worker)
        runtime.stop(timeout=1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_env(tmp_path / "home"), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]
    assert list((tmp_path / "home").glob("buffer-*.sqlite"))


def test_z4j_bare_run_with_a_celery_app_runs_its_agent_outside_a_worker(tmp_path):
    # `run` is a process that is no worker, on purpose: it opts in for its own agent.
    import signal

    from z4j_bare.testing import LocalBrain

    with LocalBrain() as brain:
        creds = brain.mint_agent()
        env = {**_env(tmp_path / "home"), **creds.env(), "Z4J_TEST_BOOT": "none"}
        proc = subprocess.Popen([sys.executable, "-m", "z4j_bare", "run", "--app", "celery_app.tasks:app"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
        try:
            agent = brain.wait_for_agent_online(creds.agent_id, timeout=30)
            assert agent["engines"] == ["celery"]
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert proc.returncode == 0, err.decode()
        assert "agent.waiting_for_worker" not in err.decode()
