"""BufferStore across real processes: forked writers, SIGKILL + adoption, privilege drop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from z4j_bare.buffer import BufferStore

PY = sys.executable

# A stand-alone agent process: owns a buffer of the deployment, appends, reports, waits.
AGENT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import logging
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
    from z4j_bare.buffer import BufferStore
    home, dep, tag, n, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    s = BufferStore.open_for_deployment(Path(home), dep)
    s.remember_command(f"cmd-{tag}", 3600)
    s.count_loss("content_rejected_frames", 1)
    if mode == "fork-child-writer":
        if os.fork() == 0:           # a prefork child that outlives its owner
            for i in range(n):
                s.append("event", f"{tag}-child:{i}", "celery")
            os.write(1, f"child-done {os.getpid()}{chr(10)}".encode())  # one write: no interleaving
            time.sleep(60)           # the test SIGKILLs us
            os._exit(0)
    for i in range(n):
        s.append("event", f"{tag}:{i}", "celery")
    os.write(1, f"ready {s.path}{chr(10)}".encode())
    if mode == "loop":
        i = n
        while True:                  # appending until SIGKILL lands mid-append
            s.append("event", f"{tag}:{i}", "celery")
            i += 1
    time.sleep(60)
""")


def _spawn(home: Path, dep: str, tag: str, n: int, mode: str = "wait") -> subprocess.Popen:
    proc = subprocess.Popen([PY, "-c", AGENT, str(home), dep, tag, str(n), mode],
                            stdout=subprocess.PIPE, text=True)
    return proc


def _wait_line(proc: subprocess.Popen, prefix: str) -> str:
    line = proc.stdout.readline()
    assert line.startswith(prefix), line
    return line.strip()


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def _drain_all(store: BufferStore) -> list[str]:
    rows = store.read(limit=1_000_000)
    store.delete(r.id for r in rows)
    return [r.body for r in rows]


def test_forked_children_append_while_parent_drains(tmp_path):
    owner = BufferStore.open_for_deployment(tmp_path, "dep")
    try:
        owner.append("event", "parent:before-fork")
        pids = []
        for c in range(3):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    assert not owner.owner
                    ok = all(owner.append("event", f"c{c}:{i}", "celery") for i in range(400))
                    ok = ok and owner.append_many([("command_result", f"c{c}:many")]) == 1
                    code = 0 if ok else 2
                finally:
                    os._exit(code)
            pids.append(pid)
        got: list[str] = []
        last = 0
        deadline = time.monotonic() + 30
        alive = set(pids)
        while alive and time.monotonic() < deadline:
            batch = owner.read(after_id=last, limit=100)
            if batch:
                last = batch[-1].id
                owner.delete(r.id for r in batch)  # ack while children keep writing
                got += [r.body for r in batch]
            for pid in list(alive):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    alive.discard(pid)
                    assert os.waitstatus_to_exitcode(status) == 0
        assert not alive
        got += _drain_all(owner)
        assert owner.owner and owner.append("event", "parent:after")
        owner.ingest()
        assert got[0] == "parent:before-fork"
        assert len(got) == len(set(got)) == 1 + 3 * 401
        for c in range(3):
            mine = [int(b.split(":")[1]) for b in got if b.startswith(f"c{c}:") and not b.endswith("many")]
            assert mine == list(range(400)), "each writer's rows stay in order"
        assert owner.depth() == 1
    finally:
        owner.close()


def test_sigkill_mid_append_then_next_agent_recovers_the_file(tmp_path):
    proc = _spawn(tmp_path, "dep", "a", 50, "loop")
    try:
        path = _wait_line(proc, "ready").split()[1]
        time.sleep(0.3)
    finally:
        _kill(proc)
    s = BufferStore.open_for_deployment(tmp_path, "dep")  # lock died with the process
    try:
        assert str(s.path) == path
        bodies = [r.body for r in s.read(limit=1_000_000)]
        assert len(bodies) >= 50
        # The killed loop may have outrun the row cap: then the oldest were evicted, and counted.
        first = s.telemetry_loss()["event_records"]
        assert bodies == [f"a:{i}" for i in range(first, first + len(bodies))], "durable prefix, in order, intact"
        assert s.seen_command("cmd-a")
        assert s.telemetry_loss()["content_rejected_frames"] == 1
    finally:
        s.close()


def test_orphans_are_adopted_exactly_once(tmp_path):
    procs = [_spawn(tmp_path, "dep", f"o{k}", 100) for k in range(3)]
    try:
        paths = [_wait_line(p, "ready").split()[1] for p in procs]
        assert len(set(paths)) == 3  # live agents never share a file
    finally:
        for p in procs:
            _kill(p)
    # Two live agents start at once and both scan: every row lands exactly once.
    script = textwrap.dedent("""
        import sys, json, logging
        from pathlib import Path
        logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
        from z4j_bare.buffer import BufferStore
        s = BufferStore.open_for_deployment(Path(sys.argv[1]), "dep")
        sys.stdout.write("opened\\n"); sys.stdout.flush(); sys.stdin.readline()
        n = s.adopt_orphans()
        rows = s.read(limit=10**6)
        print(json.dumps({"adopted": n, "bodies": [r.body for r in rows],
                          "seen": [k for k in ("cmd-o0", "cmd-o1", "cmd-o2") if s.seen_command(k)],
                          "rejected": s.telemetry_loss()["content_rejected_frames"]}), flush=True)
        sys.stdin.readline()
        s.close()
    """)
    agents = [subprocess.Popen([PY, "-c", script, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for a in agents:
            assert a.stdout.readline().strip() == "opened"
        for a in agents:
            a.stdin.write("go\n")
            a.stdin.flush()
        results = [json.loads(a.stdout.readline()) for a in agents]
        for a in agents:
            a.stdin.write("bye\n")
            a.stdin.flush()
            assert a.wait(20) == 0
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
                a.wait()
    bodies = [b for r in results for b in r["bodies"]]
    expected = [f"o{k}:{i}" for k in range(3) for i in range(100)]
    assert sorted(bodies) == sorted(expected), "nothing lost, nothing duplicated"
    for k in range(3):  # order inside each orphan is kept
        mine = [b for r in results for b in r["bodies"] if b.startswith(f"o{k}:")]
        assert mine == [f"o{k}:{i}" for i in range(100)]
    assert sorted(s for r in results for s in r["seen"]) == ["cmd-o0", "cmd-o1", "cmd-o2"]
    assert sum(r["rejected"] for r in results) == 3  # loss counters travel with the rows
    leftovers = sorted(p for p in os.listdir(tmp_path))
    # the two agents re-used two of the files in place, the third was adopted and removed
    assert len([p for p in leftovers if p.endswith(".sqlite")]) == 2
    assert not any(".corrupt-" in p for p in leftovers)


def test_live_child_of_dead_owner_blocks_adoption(tmp_path):
    adopter = BufferStore.open_for_deployment(tmp_path, "dep")
    child_pid = None
    try:
        proc = _spawn(tmp_path, "dep", "p", 10, "fork-child-writer")
        lines: dict[str, str] = {}
        while lines.keys() != {"ready", "child-done"}:  # other lines (log output) are not ours
            line = proc.stdout.readline()
            assert line, f"writer exited early; got {lines}"
            key, _, rest = line.partition(" ")
            if key in ("ready", "child-done"):
                lines[key] = rest
        assert lines["ready"].strip().endswith("buffer-dep-1.sqlite")
        child_pid = int(lines["child-done"])
        _kill(proc)  # the owner dies; its prefork child lives on and may still append
        assert adopter.adopt_orphans() == 0, "a live writer keeps the file from being adopted"
        assert (tmp_path / "buffer-dep-1.sqlite").exists()
        os.kill(child_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        adopted = 0
        while time.monotonic() < deadline and not adopted:
            adopted = adopter.adopt_orphans()
            time.sleep(0.05)
        bodies = [r.body for r in adopter.read(limit=10_000)]
        assert adopted == 20
        assert sorted(bodies) == sorted([f"p:{i}" for i in range(10)] + [f"p-child:{i}" for i in range(10)])
        assert [b for b in bodies if b.startswith("p-child")] == [f"p-child:{i}" for i in range(10)]
        assert sorted(os.listdir(tmp_path)) == ["buffer-dep.sqlite", "buffer-dep.sqlite-shm",
                                                "buffer-dep.sqlite-wal", "buffer-dep.sqlite.lock"]
    finally:
        if child_pid:
            try:
                os.kill(child_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        adopter.close()


@pytest.fixture
def world_tmp():
    # pytest's tmp_path lives in a root-only dir; a dropped-privilege child needs a
    # traversable base, like a real /tmp.
    base = Path(tempfile.mkdtemp(prefix="z4j-buffer-test-", dir="/tmp"))
    os.chmod(base, 0o1777)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_service_user_without_writable_home_falls_back_to_private_tmp(world_tmp):
    home = world_tmp / "root-home"
    home.mkdir(mode=0o755)  # exists, owned by root: `nobody` cannot write into it
    tmpdir = world_tmp / "tmp"
    tmpdir.mkdir()
    os.chmod(tmpdir, 0o1777)
    script = textwrap.dedent("""
        import os, sys, json, tempfile
        from pathlib import Path
        import logging
        logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
        from z4j_bare.buffer import BufferStore, BufferStorageError
        import structlog, z4j_bare.redaction  # the log route's lazy imports: this machine's stdlib is
                                              # under /root, unreadable once privileges are dropped
        os.setgid(65534); os.setuid(65534)   # like www-data / nobody / DynamicUser
        tempfile.tempdir = sys.argv[2]
        s = BufferStore.open_for_deployment(Path(sys.argv[1]), "dep")
        ok = s.append("event", "x")
        st = os.stat(s.path.parent)
        out = {"path": str(s.path), "reason": s.fallback_reason, "ok": ok, "uid": st.st_uid,
               "mode": oct(st.st_mode & 0o777), "file_mode": oct(os.stat(s.path).st_mode & 0o777)}
        s.close()
        tempfile.tempdir = "/proc/nonexistent"
        try:
            BufferStore.open_for_deployment(Path(sys.argv[1]), "dep")
            out["second"] = "opened?!"
        except BufferStorageError as exc:
            out["second"] = str(exc)
        print(json.dumps(out))
    """)
    res = subprocess.run([PY, "-c", script, str(home), str(tmpdir)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["path"] == str(tmpdir / "z4j-65534" / "buffer-dep.sqlite")
    assert out["ok"] is True and out["uid"] == 65534
    assert out["mode"] == "0o700" and out["file_mode"] == "0o600"
    assert str(home) in out["reason"]
    assert "buffer.relocated" in res.stderr + res.stdout
    assert "Z4J_HOME" in out["second"] and str(home) in out["second"]
    assert os.listdir(home) == []
