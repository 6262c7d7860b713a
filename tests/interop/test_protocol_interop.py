"""Wire-level interop with the published brain, using only ``z4j_bare.protocol`` + websocket-client.

These tests speak the protocol by hand (no agent runtime), so a failure here points at the codec
or at our reading of protocol.md / captured-frames.md, never at runtime plumbing.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import websocket
from waiting import wait_for

from z4j_bare.protocol import (
    Frame,
    FrameType,
    SessionBinding,
    Signer,
    Verifier,
    canonical_text,
    decode_hmac_secret,
    encode_unsigned,
    new_frame_id,
    parse_frame,
    utc_now_text,
)

from .realbrain import BrainCredentials, BrainHTTPError, RealBrain

# generous: the first test's setup may build the brain venv from scratch (~80 s) and boot it;
# every wait inside the tests has its own short timeout
pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

PROJECT = "interop"
CELERY_CAPS = sorted(
    ["add_consumer", "bulk_retry", "cancel_consumer", "cancel_task", "pool_grow", "pool_shrink",
     "purge_queue", "rate_limit", "restart_worker", "retry_by_reference_v1", "retry_task", "submit_task"]
)  # fmt: skip
RETRY_PARAMETER_KEYS = {
    "engine", "task_id", "task_name", "args", "kwargs", "override_args", "override_kwargs",
    "original_had_args", "eta", "eta_seconds", "priority",
}  # fmt: skip


def ws_url(brain_url: str) -> str:
    return brain_url.replace("http://", "ws://", 1).rstrip("/") + "/ws/agent"


def hello_payload(**overrides: Any) -> dict[str, Any]:
    pid = os.getpid()
    payload = {
        "protocol_version": "2",
        "agent_version": "1.13.0",
        "framework": "bare",
        "engines": ["celery"],
        "schedulers": [],
        "capabilities": {"celery": CELERY_CAPS},
        "host": {"name": "interop-probe"},
        "worker_id": f"bare-{pid}-{time.time_ns() // 1_000_000}",
        "worker_role": "task",
        "worker_pid": pid,
        "worker_started_at": utc_now_text(),
        "runtime_features": ["retry_by_reference"],
    }
    payload.update(overrides)
    return payload


class ProbeSession:
    """A hand-driven agent connection: hello, then signed frames both ways."""

    def __init__(self, creds: BrainCredentials, token: str | None = None) -> None:
        self.creds = creds
        self.ws = websocket.create_connection(
            ws_url(creds.brain_url),
            header=[f"Authorization: Bearer {token or creds.token}"],
            timeout=10,
        )
        self.ack: dict[str, Any] = {}
        self.signer: Signer | None = None
        self.verifier: Verifier | None = None

    def send_hello(self, **overrides: Any) -> None:
        self.ws.send_binary(
            encode_unsigned(
                FrameType.HELLO, new_frame_id("hello_", 16), hello_payload(**overrides)
            )
        )

    def handshake(self, **overrides: Any) -> dict[str, Any]:
        self.send_hello(**overrides)
        frame = parse_frame(self.ws.recv())
        assert frame.type is FrameType.HELLO_ACK, frame
        self.ack = frame.payload
        binding = SessionBinding(
            self.ack["agent_id"], self.ack["project_id"], self.ack["session_id"]
        )
        key = decode_hmac_secret(self.creds.hmac_secret)
        self.signer, self.verifier = Signer(key, binding), Verifier(key, binding)
        return self.ack

    def sign(
        self, ftype: FrameType | str, frame_id: str, payload: dict[str, Any]
    ) -> bytes:
        assert self.signer is not None, "handshake first"
        return self.signer.sign(ftype, frame_id, payload)

    def send(
        self, ftype: FrameType | str, frame_id: str, payload: dict[str, Any]
    ) -> None:
        self.ws.send_binary(self.sign(ftype, frame_id, payload))

    def send_events(self, events: list[dict[str, Any]]) -> str:
        assert self.signer is not None, "handshake first"
        frame_id = new_frame_id("ev_", 32)
        self.ws.send_binary(
            self.signer.sign_event_batch(frame_id, [canonical_text(e) for e in events])
        )
        return frame_id

    def heartbeat_and_status(self) -> None:
        self.send(FrameType.HEARTBEAT, new_frame_id("hb_"), {
            "buffer_size": 0, "last_flush_at": None, "dropped_events": 0, "telemetry_loss": None,
            "adapter_health": {"celery.broker_type": "redis", "celery.broker_connected": "True"},
        })  # fmt: skip
        self.send(FrameType.AGENT_STATUS, new_frame_id("as_"), {
            "telemetry_loss": None, "auth_failure_streak": 0, "protocol_failure_streak": 0,
            "connection_failure_streak": 0, "last_successful_connect_at": utc_now_text(),
            "current_session_age_seconds": 0.1, "buffer_depth": 0, "buffer_oldest_age_seconds": None,
            "agent_version": "1.13.0", "protocol_version": "2", "engines": ["celery"], "schedulers": [],
        })  # fmt: skip

    def recv(self, ftype: FrameType, timeout: float = 10) -> Frame:
        """Next verified frame of ``ftype`` (others are verified too, then skipped)."""
        assert self.verifier is not None, "handshake first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            frame = self.verifier.verify(self.ws.recv())
            if frame.type is ftype:
                return frame
        raise TimeoutError(f"no {ftype.value} frame within {timeout} s")

    def close_code(self, timeout: float = 10) -> int | None:
        """Read until the brain's close frame; its status code, or None if the stream just ended."""
        self.ws.settimeout(timeout)
        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
        except websocket.WebSocketConnectionClosedException:
            return None

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def session(brain_creds: BrainCredentials):
    probe = ProbeSession(brain_creds)
    try:
        yield probe
    finally:
        probe.close()


def task_event(kind: str, task_id: str, at: datetime, **data: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "kind": f"task.{kind}",
        "engine": "celery",
        "task_id": task_id,
        "occurred_at": at.isoformat(),
        "data": data,
    }


def lifecycle(
    task_id: str, name: str, queue: str, end: str | None, t0: datetime
) -> list[dict[str, Any]]:
    """received -> started [-> succeeded|failed] for one task, 1 ms apart."""
    base = {"task_name": name, "queue": queue, "worker": "probe@127.0.0.1"}
    events = [
        task_event("received", task_id, t0, **base, args=[2, 3], kwargs={}),
        task_event("started", task_id, t0 + timedelta(milliseconds=1), **base),
    ]
    end_at = t0 + timedelta(milliseconds=2)
    if end == "succeeded":
        events.append(
            task_event("succeeded", task_id, end_at, **base, result="5", runtime_ms=12)
        )
    elif end == "failed":
        events.append(task_event("failed", task_id, end_at, **base, exception="ValueError",
                                 exception_message="ValueError('boom')", traceback="Traceback ...", runtime_ms=3))  # fmt: skip
    return events


# ---------------------------------------------------------------------------------------------


def test_handshake_events_and_signed_ack(
    real_brain: RealBrain, session: ProbeSession
) -> None:
    creds = session.creds
    ack = session.handshake()
    assert ack["protocol_version"] == "2"
    assert ack["brain_version"] == "1.13.0"
    assert ack["agent_id"] == creds.agent_id
    assert (
        ack["project_id"] == creds.project_uuid
    )  # the UUID, while Z4J_PROJECT_ID is the slug
    assert uuid.UUID(ack["session_id"])
    assert ack["heartbeat_interval_seconds"] == 10
    assert ack["max_frame_size_bytes"] == 1_048_576
    session.heartbeat_and_status()

    run = uuid.uuid4().hex[:8]
    ok, bad, busy = f"ok-{run}", f"bad-{run}", f"busy-{run}"
    t0 = datetime.now(UTC) - timedelta(seconds=1)
    events = (
        lifecycle(ok, "demo.add", "interop-q", "succeeded", t0)
        + lifecycle(bad, "demo.boom", "interop-q", "failed", t0)
        + lifecycle(busy, "demo.slow", "slow-q", None, t0)
    )
    batch_id = session.send_events(events)
    frame = session.recv(
        FrameType.EVENT_BATCH_ACK
    )  # Verifier checked hmac, seq, nonce and ts
    assert frame.id == f"eba_{batch_id}"[:64]
    assert frame.seq == 1
    assert frame.payload == {
        "acked_id": batch_id,
        "received": 8,
        "accepted": 8,
        "rejected": 0,
    }

    # same events (same occurred_at) in a new frame: acked, and deduplicated by the brain
    again = session.send_events(events)
    dup = session.recv(FrameType.EVENT_BATCH_ACK)
    assert dup.payload == {
        "acked_id": again,
        "received": 8,
        "accepted": 0,
        "rejected": 8,
    }

    rows = wait_for(lambda: [real_brain.task(PROJECT, "celery", t) for t in (ok, bad, busy)]
                    if all(real_brain.task(PROJECT, "celery", t) for t in (ok, bad, busy)) else None,
                    timeout=5, what="three task rows", interval=0.1)  # fmt: skip
    by_id = {r["task_id"]: r for r in rows}
    assert by_id[ok]["state"] == "success" and by_id[ok]["name"] == "demo.add"
    assert (
        by_id[ok]["queue"] == "interop-q"
        and by_id[ok]["result"] == "5"
        and by_id[ok]["runtime_ms"] == 12
    )
    assert by_id[ok]["args"] == [2, 3] and by_id[ok]["worker_name"] == "probe@127.0.0.1"
    assert by_id[bad]["state"] == "failure" and by_id[bad]["name"] == "demo.boom"
    assert (
        by_id[bad]["exception"] == "ValueError"
        and by_id[bad]["traceback"] == "Traceback ..."
    )
    assert by_id[busy]["state"] == "started" and by_id[busy]["queue"] == "slow-q"
    assert by_id[busy]["finished_at"] is None
    assert {r["task_id"] for r in real_brain.tasks(PROJECT, state="failure")} >= {bad}

    agent = real_brain.agent(PROJECT, creds.agent_id)
    assert agent is not None
    assert agent["state"] == "online"
    assert agent["framework_adapter"] == "bare" and agent["engine_adapters"] == [
        "celery"
    ]
    assert agent["capabilities"] == {"celery": CELERY_CAPS}
    assert agent["protocol_version"] == "2" and agent["host_name"] == "interop-probe"
    assert agent["agent_version"] == "1.13.0" and agent["version_status"] == "current"
    assert "probe@127.0.0.1" in {w["name"] for w in real_brain.workers(PROJECT)}


def test_wrong_token_is_closed_4401(brain_creds: BrainCredentials) -> None:
    probe = ProbeSession(brain_creds, token="not-the-token-" + "x" * 30)
    try:
        # the brain checks the bearer before reading hello and may already be closing
        with contextlib.suppress(OSError, websocket.WebSocketException):
            probe.send_hello()
        assert probe.close_code() == 4401
    finally:
        probe.close()


@pytest.mark.parametrize("fault", ["tampered", "replayed"])
def test_bad_signature_or_replay_is_closed_4403(
    session: ProbeSession, fault: str
) -> None:
    session.handshake()
    raw = session.sign(
        FrameType.HEARTBEAT,
        new_frame_id("hb_"),
        {"buffer_size": 0, "adapter_health": {}},
    )
    if fault == "tampered":
        assert b'"buffer_size":0' in raw
        session.ws.send_binary(raw.replace(b'"buffer_size":0', b'"buffer_size":1'))
    else:
        session.ws.send_binary(raw)  # accepted once ...
        session.ws.send_binary(
            raw
        )  # ... the identical frame again: seq and nonce replayed
    assert session.close_code() == 4403


@pytest.mark.parametrize("first", ["garbage", "signed-heartbeat", "hello-v3-envelope"])
def test_bad_first_frame_is_closed_4400(session: ProbeSession, first: str) -> None:
    if first == "garbage":
        session.ws.send("this is not json")
    elif first == "signed-heartbeat":
        key = decode_hmac_secret(session.creds.hmac_secret)
        signer = Signer(
            key,
            SessionBinding(
                session.creds.agent_id, session.creds.project_uuid, "no-session"
            ),
        )
        session.ws.send_binary(
            signer.sign(FrameType.HEARTBEAT, new_frame_id("hb_"), {"buffer_size": 0})
        )
    else:
        raw = encode_unsigned(
            FrameType.HELLO, new_frame_id("hello_", 16), hello_payload()
        )
        session.ws.send_binary(raw.replace(b'{"v":2,', b'{"v":3,', 1))
    assert session.close_code() == 4400


def test_protocol_version_3_is_closed_4426(session: ProbeSession) -> None:
    session.send_hello(protocol_version="3")
    assert session.close_code() == 4426


def test_retry_command_roundtrip(real_brain: RealBrain, session: ProbeSession) -> None:
    creds = session.creds
    session.handshake()
    session.heartbeat_and_status()
    task_id = f"retry-{uuid.uuid4().hex[:8]}"
    session.send_events(
        lifecycle(task_id, "demo.boom", "interop-q", "failed", datetime.now(UTC))
    )
    assert session.recv(FrameType.EVENT_BATCH_ACK).payload["accepted"] == 3

    record = real_brain.command(
        PROJECT,
        "retry-task",
        {"agent_id": creds.agent_id, "engine": "celery", "task_id": task_id},
    )
    assert (
        record["status"] in ("pending", "dispatched")
        and record["action"] == "retry_task"
    )

    cmd = session.recv(FrameType.COMMAND)
    assert cmd.id == record["id"]
    p = cmd.payload
    assert p["action"] == "retry_task"
    assert p["target"] == {
        "type": "task",
        "id": f"celery:{task_id}",
        "engine": "celery",
    }
    assert set(p["parameters"]) >= RETRY_PARAMETER_KEYS
    params = p["parameters"]
    assert (params["engine"], params["task_id"], params["task_name"]) == (
        "celery",
        task_id,
        "demo.boom",
    )
    assert (
        params["args"] is None and params["kwargs"] is None
    )  # retry by reference: no arguments
    assert p["timeout_seconds"] == 60
    assert p["issued_by"] == record["issued_by"]
    assert "delivery_claim_token" in p
    claim = p["delivery_claim_token"]

    session.send(FrameType.COMMAND_ACK, cmd.id, {"delivery_claim_token": claim})
    time.sleep(0.3)
    assert (
        real_brain.get_command(PROJECT, cmd.id)["status"] == "dispatched"
    )  # ack alone never terminalises

    result = {"task_id": str(uuid.uuid4()), "queue": "interop-q", "source": "reference"}
    session.send(FrameType.COMMAND_RESULT, cmd.id,
                 {"status": "success", "result": result, "error": None, "delivery_claim_token": claim})  # fmt: skip
    done = real_brain.wait_command(PROJECT, cmd.id, timeout=10)
    assert done["status"] == "completed"
    assert done["result"] == result and done["error"] is None

    # a failed result is recorded as failed with the agent's error text
    record2 = real_brain.command(
        PROJECT,
        "retry-task",
        {"agent_id": creds.agent_id, "engine": "celery", "task_id": task_id},
    )
    cmd2 = session.recv(FrameType.COMMAND)
    assert cmd2.id == record2["id"]
    session.send(
        FrameType.COMMAND_ACK,
        cmd2.id,
        {"delivery_claim_token": cmd2.payload["delivery_claim_token"]},
    )
    session.send(FrameType.COMMAND_RESULT, cmd2.id, {"status": "failed", "result": None, "error": "broker unreachable",
                                                     "delivery_claim_token": cmd2.payload["delivery_claim_token"]})  # fmt: skip
    failed = real_brain.wait_command(PROJECT, cmd2.id, timeout=10)
    assert failed["status"] == "failed" and "broker unreachable" in (
        failed["error"] or ""
    )


@pytest.mark.parametrize(("caps", "reason"), [
    (["cancel_task", "retry_task"], "retry_by_reference_v1"),  # retry without the by-reference attestation
    (["cancel_task"], "does not advertise 'retry_task'"),
])  # fmt: skip
def test_retry_is_refused_without_advertised_capability(
    real_brain: RealBrain, session: ProbeSession, caps: list[str], reason: str
) -> None:
    session.handshake(capabilities={"celery": caps})
    task_id = f"gate-{uuid.uuid4().hex[:8]}"
    session.send_events(
        lifecycle(task_id, "demo.boom", "interop-q", "failed", datetime.now(UTC))
    )
    session.recv(FrameType.EVENT_BATCH_ACK)
    with pytest.raises(BrainHTTPError) as refused:
        real_brain.command(
            PROJECT,
            "retry-task",
            {
                "agent_id": session.creds.agent_id,
                "engine": "celery",
                "task_id": task_id,
            },
        )
    assert refused.value.status == 422 and reason in refused.value.body
