"""Field faults against the real z4j 1.13.0 brain, at the agent's real defaults (issue 21).

A real ``rq worker`` runs the agent as a user would. The brain's whole process group is frozen
with SIGSTOP: the kernel keeps its sockets (no FIN, no RST), exactly like a frozen host or a
black-holed path. The worker's log (INFO, tests/interop/hostlog) is what an operator reads.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import redis
from rq import Queue

from .realbrain import RealBrain
from .workers import RQ_REDIS_URL, RqWorker, clean_rq_queues, unique, wait_until

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

PROJECT = "faults"
NOTICE_WITHIN_S = 45.0  # issue 21: health() says not connected within 45 s of the brain going silent
BACK_WITHIN_S = 5.0  # and the session is back within seconds of the brain answering again


def _succeeded(brain: RealBrain, ids: set[str]) -> bool:
    rows = {r["task_id"]: r for r in brain.tasks(PROJECT)}
    return all(rows.get(i, {}).get("state") == "success" for i in ids)


def _log_lines(path: Path, needle: str) -> list[str]:
    try:
        return [line for line in path.read_text(errors="replace").splitlines() if needle in line]
    except OSError:
        return []


def test_a_frozen_real_brain_is_noticed_and_the_worker_reconnects_when_it_thaws(
    real_brain: RealBrain, tmp_path: Path
) -> None:
    creds = real_brain.mint_agent(project=PROJECT, name="frozen-brain")
    queue_name = unique("rq-frozen")
    (tmp_path / "worker").mkdir()
    worker = RqWorker(worker_class="z4j_rq.Worker", queues=[queue_name], agent_env=creds.as_env(),
                      home=tmp_path / "worker")
    conn = redis.Redis.from_url(RQ_REDIS_URL)
    queue = Queue(queue_name, connection=conn)
    try:
        before = {queue.enqueue("rq_app.jobs.add", i, 1).id for i in range(10)}
        wait_until(lambda: _succeeded(real_brain, before), 60, "the first jobs in the brain")
        frozen_at = time.monotonic()
        real_brain.freeze()
        try:
            during = [queue.enqueue("rq_app.jobs.add", i, 2) for i in range(10)]
            wait_until(lambda: all(j.get_status(refresh=True) == "finished" for j in during), 60,
                       "the jobs to run while the brain is frozen")
            wait_until(lambda: _log_lines(worker.log_path, "the brain stopped answering"), NOTICE_WITHIN_S + 5,
                       lambda: f"no silence verdict in the worker's log:\n{worker.log()}", poll=0.2)
            noticed_s = time.monotonic() - frozen_at
            opens = len(_log_lines(worker.log_path, "runtime.session_open"))
            time.sleep(12.0)  # at least one reconnect attempt waits out its timeout meanwhile
        finally:
            thawed_at = time.monotonic()
            real_brain.thaw()
        wait_until(lambda: len(_log_lines(worker.log_path, "runtime.session_open")) > opens, 30,
                   lambda: f"no new session after the brain thawed:\n{worker.log()}", poll=0.1)
        back_s = time.monotonic() - thawed_at
        wanted = before | {j.id for j in during}
        wait_until(lambda: _succeeded(real_brain, wanted), 90, "every job's success in the brain")
    finally:
        worker.stop()
        clean_rq_queues([queue_name])
        conn.close()
    log = worker.log(10**7)
    warnings = [line for line in log.splitlines() if " WARNING " in line and "runtime.session_failed" in line]
    assert len(warnings) == 1 and "the brain stopped answering" in warnings[0], log[-3000:]
    assert re.search(r"limit (\d+\.\d) s", warnings[0]), warnings[0]
    print(f"\nfrozen real brain: noticed after {noticed_s:.1f} s, session back {back_s:.2f} s after SIGCONT")
    assert noticed_s < NOTICE_WITHIN_S
    assert back_s < BACK_WITHIN_S


@pytest.mark.parametrize("skew", [300.0, -300.0])
def test_a_real_worker_delivers_to_a_real_brain_whose_clock_is_five_minutes_off(
    tmp_path_factory: pytest.TempPathFactory, skew: float
) -> None:
    """The real brain 1.13 under libfaketime, 300 s ahead of and behind this host: it refuses any
    frame more than 60 s from its clock, so only an agent that signs with the brain's time delivers.
    The worker (never under libfaketime) logs the skew once; doctor fails its skew stage with the
    fix, while its hmac stage still proves the key."""
    from z4j_bare.diagnostics import run_doctor

    home = tmp_path_factory.mktemp("skewed-brain")
    with RealBrain(home=home, clock_offset=skew) as brain:
        creds = brain.mint_agent(project=PROJECT, name=f"skew{int(skew)}")
        queue_name = unique("rq-skew")
        (home / "worker").mkdir()
        worker = RqWorker(worker_class="z4j_rq.Worker", queues=[queue_name], agent_env=creds.as_env(),
                          home=home / "worker")
        conn = redis.Redis.from_url(RQ_REDIS_URL)
        try:
            queue = Queue(queue_name, connection=conn)
            ids = {queue.enqueue("rq_app.jobs.add", i, 1).id for i in range(10)}
            # (the session's first heartbeat and agent_status, with its additive clock_skew_seconds,
            # went out before any job: the one session below shows the brain took them)
            wait_until(lambda: _succeeded(brain, ids), 90, lambda: f"jobs missing in the brain:\n{worker.log()}")
            agent = brain.agent(PROJECT, creds.agent_id)
        finally:
            worker.stop()
            clean_rq_queues([queue_name])
            conn.close()
        report = run_doctor({"brain_url": creds.brain_url, "token": creds.token, "hmac_secret": creds.hmac_secret,
                             "project_id": creds.project_id, "agent_id": creds.agent_id}, env={})
    log = worker.log(10**7)
    assert agent["state"] == "online", agent
    assert "runtime.session_failed" not in log and log.count("runtime.session_open") == 1, log[-3000:]
    skew_lines = [line for line in log.splitlines() if "runtime.clock_skew" in line]
    assert len(skew_lines) == 1 and " WARNING " in skew_lines[0], log[-3000:]
    measured = float(re.search(r"skew_seconds=(-?[\d.]+)", skew_lines[0]).group(1))
    assert abs(measured - skew) < 5.0, skew_lines[0]
    stage = report.probe("skew")
    assert stage.status == "fail" and "NTP" in (stage.fix or ""), stage
    assert report.probe("hmac").status == "pass" and report.probe("runtime").status == "pass", report.render_text()
    print(f"\nreal brain {skew:+.0f} s: agent measured {measured:+.3f} s; doctor: {stage.message}")
