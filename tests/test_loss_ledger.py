"""One loss ledger, one number: every lost event is counted once, in the buffer's ledger, and the
same number shows in health(), the heartbeat, agent_status and ``z4j-bare status``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from z4j_bare.buffer import BufferStore
from z4j_bare.engines.base import EventSink
from z4j_bare.redaction import Redactor
from z4j_bare.storage.status import read_buffer

TESTS = Path(__file__).parent


def test_a_forked_childs_losses_reach_the_owners_ledger_once(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite", max_bytes=64 * 1024)
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: it has no I/O thread of its own
            code = 1
            try:
                # Neither the spool nor SQLite can store a lone surrogate: three losses in memory,
                # which the child's next spool write carries to the owner.
                refused = [s.append("event", f"lone \udc80 {i}", "celery") for i in range(3)]
                code = 0 if refused == [False] * 3 and s.append("event", "after", "celery") else 2
            finally:
                os.write(w, b"x")
                os._exit(code)
        os.close(w)
        os.read(r, 1)
        os.close(r)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        # Before the owner ingests: status reads the counts on their way (and no "~loss" row).
        seen = read_buffer(s.path)
        assert seen["loss"]["event_records"] == 3 and seen["loss"]["adapter_events"] == {"celery": 3}
        assert seen["by_kind"] == {"event": 1} and seen["depth"] == 1
        assert s.telemetry_loss()["event_records"] == 0  # not in the ledger yet: a pure read
        assert s.ingest() == 1
        assert [row.body for row in s.read()] == ["after"]
        loss = s.telemetry_loss()
        assert loss["event_records"] == 3 and loss["adapter_events"] == {"celery": 3}
        s.ingest()
        assert s.telemetry_loss()["event_records"] == 3, "counted once"
        assert read_buffer(s.path)["loss"]["event_records"] == 3
    finally:
        s.close()


def test_an_event_that_cannot_be_built_is_counted_once_in_the_ledger(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite")
    try:
        sink = EventSink("rq", s, Redactor())
        assert sink.emit("task.received", "t1", {}, occurred_at=1e20) is False  # no such date
        assert sink.emit_many([("task.received", "t2", {}, None), ("task.started", "t2", {}, float("nan"))]) is False
        assert sink.emit("task.received", "t3", {}) is True
        assert (sink.emitted, sink.lost) == (1, 3)
        loss = s.telemetry_loss()
        assert loss["event_records"] == 3 and loss["adapter_events"] == {"rq": 3}
        assert read_buffer(s.path)["loss"]["event_records"] == 3  # committed at once
    finally:
        s.close()


# The agent, a local brain and a real full filesystem, in a process of its own (the filesystem is
# a small tmpfs in a private mount namespace; where that is not allowed, the same process's file
# size limit makes the disk refuse every write that grows a file).
AGENT = textwrap.dedent("""
    import json, os, resource, signal, subprocess, sys, time
    sys.path.insert(0, sys.argv[3])
    from recording_engine import RecordingEngine
    from z4j_bare import RuntimeState
    from z4j_bare.agent import build_runtime
    from z4j_bare.config import Config
    from z4j_bare.testing import LocalBrain

    home, mode = sys.argv[1], sys.argv[2]

    def wait(predicate, what, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.05)

    def last(brain, ftype):
        frames = [f["frame"] for f in brain.frames_received(ftype) if f["frame"]]
        return frames[-1]["payload"] if frames else None

    def status_loss():
        out = subprocess.run([sys.executable, "-m", "z4j_bare", "status", "--home", home, "--json"],
                             capture_output=True, text=True, timeout=60)
        (b,) = [b for b in json.loads(out.stdout)["buffers"] if b["location"] == "home"]
        return b["loss"]["event_records"]

    with LocalBrain(heartbeat_interval=1) as brain:
        config = Config.resolve(**brain.mint_agent().kwargs(), home=home, heartbeat_seconds=1.0,
                                stop_timeout=5.0)
        engine = RecordingEngine()
        runtime = build_runtime(config, [engine])
        runtime.start()
        wait(lambda: runtime.state is RuntimeState.RUNNING, "RUNNING")
        assert runtime.buffer.path.parent == __import__("pathlib").Path(home), runtime.buffer.path
        sink = runtime.sinks["celery"]
        for i in range(50):
            assert sink.emit("task.received", f"pre{i}", {"n": i})
        assert runtime.flush(30), runtime.health()
        filler = os.path.join(home, "filler")
        if mode == "tmpfs":
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"\\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)
        else:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))  # every file is already larger
        results = [sink.emit("task.received", f"full{i}", {"n": i, "pad": "x" * 200}) for i in range(400)]
        lost, stored = results.count(False), results.count(True)
        started = time.time()
        wait(lambda: (last(brain, "heartbeat") or {}).get("dropped_events") == lost
             and brain.frames_received("heartbeat")[-1]["at"] > started + 1, "a heartbeat with the loss")
        during = {"health": runtime.health()["dropped_events"],
                  "health_loss": runtime.health()["loss"]["event_records"],
                  "heartbeat": last(brain, "heartbeat")["dropped_events"],
                  "heartbeat_loss": last(brain, "heartbeat")["telemetry_loss"]["event_records"],
                  "agent_status": last(brain, "agent_status")["telemetry_loss"]["event_records"]}
        if mode == "tmpfs":
            os.unlink(filler)
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        assert runtime.flush(60), runtime.health()
        wait(lambda: brain.event_count() == 50 + stored, "the stored events at the brain")
        wait(lambda: status_loss() == lost, "the loss committed to the buffer file")
        started = time.time()
        wait(lambda: brain.frames_received("heartbeat")[-1]["at"] > started + 1, "a later heartbeat")
        after = {"health": runtime.health()["dropped_events"], "heartbeat": last(brain, "heartbeat")["dropped_events"],
                 "agent_status": last(brain, "agent_status")["telemetry_loss"]["event_records"],
                 "status": status_loss()}
        runtime.stop()
        print(json.dumps({"lost": lost, "stored": stored, "delivered": brain.event_count() - 50,
                          "during": during, "after": after}))
""")


def _namespace_prefix() -> list[str] | None:
    """How to get a private mount namespace here (root, or an unprivileged user namespace)."""
    for prefix in (["unshare", "--mount", "--propagation", "private"],
                   ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return prefix
    return None


def test_full_disk_losses_are_reported_the_same_everywhere(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    prefix = _namespace_prefix()
    if prefix is not None:
        inner = (f"mount -t tmpfs -o size=1m,mode=0700 tmpfs {home} && "
                 f"exec {sys.executable} -c \"$AGENT\" {home} tmpfs {TESTS}")
        cmd = [*prefix, "sh", "-c", inner]
        env["AGENT"] = AGENT
    else:
        cmd = [sys.executable, "-c", AGENT, str(home), "fsize", str(TESTS)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    lost = out["lost"]
    assert lost > 0, "the disk never refused a write"
    assert out["delivered"] == out["stored"], "an event whose hook returned True never reached the brain"
    assert set(out["during"].values()) == {lost}, out
    assert set(out["after"].values()) == {lost}, out


def test_a_non_owner_whose_appends_take_the_sqlite_path_commits_its_losses_there(tmp_path):
    owner = BufferStore(tmp_path / "b.sqlite", max_bytes=64 * 1024)
    writer = BufferStore(tmp_path / "b.sqlite", owner=False, max_bytes=64 * 1024)  # another process's view
    try:
        assert writer.append("event", "y" * 70_000, "celery") is False  # can never fit: refused
        assert read_buffer(owner.path)["loss"]["event_records"] == 1  # committed with that append
        assert owner.telemetry_loss()["event_records"] == 1
    finally:
        writer.close()
        owner.close()
