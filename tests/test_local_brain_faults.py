"""Every bad frame is rejected with the real brain's close code; every fault knob does what it says."""

from __future__ import annotations

import json
import socket
import time

import pytest
from websockets.exceptions import InvalidStatus

from z4j_bare.protocol import (
    ProtocolVersionError,
    ReplayError,
    SignatureError,
    encode_unsigned,
    FrameType,
    utc_now_text,
)
from z4j_bare.protocol.signing import compute_hmac
from z4j_bare.testing import LocalBrain
from z4j_bare.testing.peer import RawPeer, default_hello, make_event


@pytest.fixture
def brain():
    with LocalBrain() as b:
        yield b


@pytest.fixture
def creds(brain):
    return brain.mint_agent()


@pytest.fixture
def peer(creds):
    p = RawPeer.from_credentials(creds)
    p.handshake()
    yield p
    p.close()


def _closed_with(brain, code, timeout=5.0):
    deadline = time.monotonic() + timeout
    while code not in brain.close_codes and time.monotonic() < deadline:
        time.sleep(0.02)
    return code in brain.close_codes


# -- handshake rejections -------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["wrong-token", None, ""])
def test_bad_or_missing_bearer_is_accepted_then_closed_4401(brain, creds, token):
    with RawPeer(creds.brain_url, token, creds.hmac_secret) as peer:
        peer.open()  # the upgrade itself succeeds (3.4: accept first, then close)
        assert peer.wait_closed() == 4401
    assert brain.close_codes == [4401]


def test_revoked_agent_is_refused_4401_and_live_sessions_closed_4003(brain, creds, peer):
    brain.revoke_agent(creds.agent_id)
    assert peer.wait_closed() == 4003
    with RawPeer.from_credentials(creds) as again:
        again.open()
        assert again.wait_closed() == 4401
    assert brain.agents()[0]["revoked"]


@pytest.mark.parametrize(
    "first",
    [b"not json", b"[1,2]", encode_unsigned(FrameType.HELLO_ACK, "hack_x", {}),
     json.dumps({"v": 2, "id": "hb_1", "ts": None, "type": "heartbeat", "payload": {}}).encode(),
     json.dumps({"v": 3, "id": "hello_1", "ts": None, "type": "hello", "payload": default_hello()}).encode()],
)
def test_first_frame_must_be_a_hello_else_4400(brain, creds, first):
    with RawPeer.from_credentials(creds) as peer:
        peer.open()
        peer.send(first)
        assert peer.wait_closed() == 4400


@pytest.mark.parametrize("version", ["3", "1", None, 2])
def test_unsupported_protocol_version_closes_4426(brain, creds, version):
    with RawPeer.from_credentials(creds) as peer:
        peer.open()
        peer.send(encode_unsigned(FrameType.HELLO, "hello_1", default_hello(protocol_version=version)))
        assert peer.wait_closed() == 4426


def test_wrong_path_is_a_404(brain, creds):
    with pytest.raises(InvalidStatus) as info:
        RawPeer.from_credentials(creds, path="/ws").open()
    assert info.value.response.status_code == 404


# -- rejections after the handshake ---------------------------------------------------------------


def test_tampered_frame_closes_4403(brain, peer):
    data = json.loads(peer.sign("heartbeat", "hb_000000000001", {"buffer_size": 0}))
    data["payload"]["buffer_size"] = 99
    peer.send(json.dumps(data))
    assert peer.wait_closed() == 4403


def test_missing_hmac_closes_4403(brain, peer):
    frame = {"v": 2, "id": "hb_1", "ts": utc_now_text(), "nonce": "n" * 22, "seq": 1, "type": "heartbeat",
             "payload": {"buffer_size": 0}}
    peer.send(json.dumps(frame))
    assert peer.wait_closed() == 4403


def test_replayed_frame_closes_4403(brain, peer):
    data = peer.sign("heartbeat", "hb_000000000001", {"buffer_size": 0})
    peer.send(data)
    peer.send(data)
    assert peer.wait_closed() == 4403
    assert brain.agents()[0]["heartbeats"] == 1


def test_stale_frame_closes_4403(brain, creds, peer):
    from z4j_bare.protocol import decode_hmac_secret

    ack = peer.hello_ack
    frame = {"v": 2, "id": "hb_1", "ts": "2020-01-01T00:00:00.000000Z", "nonce": "A" * 22, "seq": 1,
             "type": "heartbeat", "payload": {"buffer_size": 0}}
    binding = {"agent_id": ack["agent_id"], "project_id": ack["project_id"], "session_id": ack["session_id"]}
    frame["hmac"] = compute_hmac(decode_hmac_secret(creds.hmac_secret), {**frame, **binding})
    peer.send(json.dumps(frame))
    assert peer.wait_closed() == 4403


def test_signed_v3_frame_closes_4400(brain, creds, peer):
    from z4j_bare.protocol import decode_hmac_secret

    ack = peer.hello_ack
    frame = {"v": 3, "id": "hb_1", "ts": utc_now_text(), "nonce": "B" * 22, "seq": 1, "type": "heartbeat",
             "payload": {"buffer_size": 0}}
    binding = {"agent_id": ack["agent_id"], "project_id": ack["project_id"], "session_id": ack["session_id"]}
    frame["hmac"] = compute_hmac(decode_hmac_secret(creds.hmac_secret), {**frame, **binding})
    peer.send(json.dumps(frame))
    assert peer.wait_closed() == 4400


@pytest.mark.parametrize("raw", [b"{not json", b'{"v":2,"id":"x","type":"nope","payload":{}}'])
def test_malformed_frame_after_handshake_closes_4400(brain, peer, raw):
    peer.send(raw)
    assert peer.wait_closed() == 4400


def test_second_hello_closes_4400(brain, peer):
    peer.send(encode_unsigned(FrameType.HELLO, "hello_2", default_hello()))
    assert peer.wait_closed() == 4400


def test_command_result_with_bad_status_closes_4400(brain, peer):
    peer.send_signed("command_result", "0e203dd2-050f-449f-a9fb-1a806e50870e",
                     {"status": "timeout", "result": None, "error": None, "delivery_claim_token": None})
    assert peer.wait_closed() == 4400


def test_oversized_frame_closes_4400_and_small_limit_is_advertised(creds):
    with LocalBrain(max_frame_size=4096) as brain:
        c = brain.mint_agent()
        with RawPeer.from_credentials(c) as peer:
            assert peer.handshake()["max_frame_size_bytes"] == 4096
            peer.send_events([make_event(task_id=f"t{i}") for i in range(3)])  # small: fine
            assert peer.recv_type("event_batch_ack").payload["accepted"] == 3
            big = peer.event_batch([make_event(task_id=f"t{i}") for i in range(40)])[1]
            assert len(big) > 4096
            peer.send(big)
            assert peer.wait_closed() == 4400
        assert brain.event_count() == 3


def test_advertise_max_frame_size_knob(brain, creds):
    brain.faults.advertise_max_frame_size = 2048
    with RawPeer.from_credentials(creds) as peer:
        assert peer.handshake()["max_frame_size_bytes"] == 2048
        peer.send(peer.event_batch([make_event(task_id=f"t{i}") for i in range(20)])[1])
        assert peer.wait_closed() == 4400


def test_idle_session_closes_4408(creds):
    with LocalBrain(idle_timeout=0.3) as brain:
        c = brain.mint_agent()
        with RawPeer.from_credentials(c) as peer:
            peer.handshake()
            t0 = time.monotonic()
            assert peer.wait_closed() == 4408
            assert 0.25 <= time.monotonic() - t0 < 3
        with RawPeer.from_credentials(c) as silent:
            silent.open()  # never sends hello: the same idle rule applies
            assert silent.wait_closed() == 4408


def test_same_worker_slot_displaces_the_older_session_4002(brain, creds):
    with RawPeer.from_credentials(creds) as old, RawPeer.from_credentials(creds) as new:
        old.handshake(worker_id="bare-1-1")
        new.handshake(worker_id="bare-1-1")
        assert old.wait_closed() == 4002
        new.send_events([make_event()])
        assert new.recv_type("event_batch_ack").payload["accepted"] == 1
    with RawPeer.from_credentials(creds) as a, RawPeer.from_credentials(creds) as b:
        a.handshake(worker_id="bare-2-1")
        b.handshake(worker_id="bare-3-1")  # other slot: both stay up
        a.send_signed("heartbeat", "hb_000000000001", {"buffer_size": 0})
        b.send_signed("heartbeat", "hb_000000000001", {"buffer_size": 0})
        time.sleep(0.2)
        assert brain.agents()[0]["open_sessions"] == 2


# -- ack knobs ------------------------------------------------------------------------------------


def test_withhold_acks_stores_but_never_acks(brain, peer):
    brain.faults.withhold_acks = True
    peer.send_events([make_event()])
    brain.wait_for_events(1, timeout=5)
    with pytest.raises(TimeoutError):
        peer.recv(timeout=0.4)
    brain.faults.withhold_acks = False
    peer.send_events([make_event(task_id="t2")])
    assert peer.recv_type("event_batch_ack").payload["accepted"] == 1


def test_ack_delay(brain, peer):
    brain.faults.ack_delay = 0.4
    t0 = time.monotonic()
    peer.send_events([make_event()])
    peer.recv_type("event_batch_ack")
    assert time.monotonic() - t0 >= 0.38


def test_slow_ingest_per_event(brain, peer):
    brain.faults.slow_ingest_per_event = 0.01
    t0 = time.monotonic()
    peer.send_events([make_event(task_id=f"t{i}") for i in range(30)])
    peer.recv_type("event_batch_ack")
    assert time.monotonic() - t0 >= 0.28


def test_drop_after_frames_aborts_without_a_close_frame(brain, peer):
    brain.faults.drop_after_frames = 2
    peer.send_events([make_event(task_id="a")])
    peer.recv_type("event_batch_ack")
    peer.send_events([make_event(task_id="b")])  # second frame trips the knob: neither stored nor acked
    assert peer.wait_closed() is None
    assert brain.dropped_connections == 1 and brain.faults.drop_after_frames is None
    assert [e["task_id"] for e in brain.events()] == ["a"]


def test_close_with_and_reject_next(brain, creds, peer):
    assert brain.faults.close_with(4429) == 1
    assert peer.wait_closed() == 4429
    brain.faults.reject_next(2, 1013)
    for _ in range(2):
        with RawPeer.from_credentials(creds) as p:
            p.open()
            assert p.wait_closed() == 1013
    with RawPeer.from_credentials(creds) as p:
        assert p.handshake()["agent_id"] == creds.agent_id
    assert brain.close_codes == [4429, 1013, 1013]


# -- stalls, pause, restart -----------------------------------------------------------------------


def test_stall_never_answers_the_upgrade(brain, creds):
    brain.faults.stall = True
    with pytest.raises(TimeoutError):
        RawPeer.from_credentials(creds).open(timeout=0.4)
    brain.faults.stall = False
    with RawPeer.from_credentials(creds) as peer:
        peer.handshake()


def test_stall_hello_ack(brain, creds):
    brain.faults.stall_hello_ack = True
    with RawPeer.from_credentials(creds) as peer:
        peer.open()
        peer.send(encode_unsigned(FrameType.HELLO, "hello_1", default_hello()))
        with pytest.raises(TimeoutError):
            peer.recv_raw(timeout=0.4)
        brain.faults.stall_hello_ack = False
        assert json.loads(peer.recv_raw(timeout=5))["type"] == "hello_ack"


def test_pause_refuses_connections_and_resume_reuses_the_port(brain, creds, peer):
    port = brain.port
    brain.pause()
    assert peer.wait_closed() == 1001
    assert brain.paused
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    brain.resume()
    assert brain.port == port and not brain.paused
    with RawPeer.from_credentials(creds) as again:
        again.handshake()
        again.send_events([make_event()])
        assert again.recv_type("event_batch_ack").payload["accepted"] == 1


def test_stop_releases_stalled_connections(creds):
    brain = LocalBrain().start()
    c = brain.mint_agent()
    brain.faults.stall = True
    raw = socket.create_connection(("127.0.0.1", brain.port), timeout=2)
    raw.sendall(b"GET /ws/agent HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    idle = socket.create_connection(("127.0.0.1", brain.port), timeout=2)  # never sends a request
    time.sleep(0.2)
    t0 = time.monotonic()
    brain.close()
    assert time.monotonic() - t0 < 5
    for sock in (raw, idle):  # the brain hung up on both instead of waiting for them
        try:
            data = sock.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b"" or data.startswith(b"HTTP/1.1 503")
        sock.close()
    assert not brain.running and c.agent_id


# -- bad frames sent to the agent -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "error"),
    [("tampered", SignatureError), ("stale", ReplayError), ("v3", ProtocolVersionError),
     ("unsigned_command", SignatureError)],
)
def test_send_to_agent_bad_frames_fail_agent_verification(brain, peer, kind, error):
    assert brain.faults.send_to_agent(kind) == 1
    with pytest.raises(error):
        peer.recv()
    assert brain.frames_sent()[-1]["type"] in ("event_batch_ack", "command")


def test_send_to_agent_replayed_repeats_the_last_frame(brain, peer):
    peer.send_events([make_event()])
    ack = peer.recv_type("event_batch_ack")
    assert brain.faults.send_to_agent("replayed") == 1
    with pytest.raises(ReplayError):
        peer.recv()
    assert brain.frames_sent("replayed")[-1]["frame"]["seq"] == ack.seq


def test_send_to_agent_oversized_and_error_frames(brain, peer):
    brain.faults.send_to_agent("oversized")
    raw = peer.recv_raw()
    assert len(raw) > 1_048_576
    peer.verifier.verify(raw)  # correctly signed: only its size is wrong
    brain.faults.send_to_agent("error_fatal")
    err = peer.recv()
    assert err.type is FrameType.ERROR and err.id.startswith("err_")
    assert err.payload == {"code": "scheduler_upgrade_required", "fatal": True,
                           "message": "error frame sent by the local brain's fault knob"}
    brain.faults.send_to_agent("error", code="whatever", message="hi")
    assert peer.recv().payload == {"code": "whatever", "message": "hi", "fatal": False}
    with pytest.raises(ValueError, match="unknown kind"):
        brain.faults.send_to_agent("bogus")


def test_faults_reset_and_snapshot(brain):
    brain.faults.withhold_acks = True
    brain.faults.reject_next(1, 4429)
    brain.faults.slow_ingest_per_event = 0.5
    assert brain.faults.snapshot()["reject_next"] == [4429]
    assert "withhold_acks" in repr(brain.faults)
    brain.faults.reset()
    assert brain.faults.snapshot() == {
        "withhold_acks": False, "ack_delay": 0.0, "drop_after_frames": None, "stall": False,
        "stall_hello_ack": False, "advertise_max_frame_size": None, "slow_ingest_per_event": 0.0,
        "reject_next": [],
    }
    with pytest.raises(ValueError, match="slow_ingest_per_event"):
        brain.faults.slow_ingest_per_event = -1


def test_non_canonical_events_text_is_rejected_like_the_real_brain(brain, peer):
    """A signer that splices non-canonical event JSON signs bytes the real brain never rebuilds."""
    event = make_event(task_id="nc")
    unsorted = json.dumps(event, separators=(",", ":"))  # key order as built, not sorted
    assert unsorted != json.dumps(event, sort_keys=True, separators=(",", ":"))
    peer.send(peer.signer.sign_event_batch("ev_" + "c" * 32, [unsorted]))
    assert peer.wait_closed() == 4403
    assert brain.event_count() == 0


def test_strict_verify_checks_large_frames_every_time(creds):
    with LocalBrain(strict_verify=True) as brain:
        c = brain.mint_agent()
        with RawPeer.from_credentials(c) as peer:
            peer.handshake()
            for i in range(10):  # past the always-strict first frames
                peer.send_events([make_event(task_id=f"s{i}")])
                peer.recv_type("event_batch_ack")
            big = json.dumps(make_event(task_id="x", blob="y" * 70_000), separators=(",", ":"))
            peer.send(peer.signer.sign_event_batch("ev_" + "d" * 32, [big]))
            assert peer.wait_closed() == 4403
        assert brain.event_count() == 10
