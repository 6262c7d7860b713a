"""The local brain's extension points: plain HTTP routes on its port, the inbound frame table,
session hooks with pinned commands, batch hooks, and frames pushed by a server-side module."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import uuid

import pytest

from z4j_bare.protocol import CloseCode, FrameType
from z4j_bare.testing import LocalBrain
from z4j_bare.testing.dispatch import FrameRejected
from z4j_bare.testing.http_api import HttpError, HttpRequest, HttpResponse
from z4j_bare.testing.peer import RawPeer, make_event


@pytest.fixture
def brain():
    with LocalBrain() as b:
        yield b


@pytest.fixture
def creds(brain):
    return brain.mint_agent()


def _http(brain: LocalBrain) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", brain.port, timeout=10)


def _raw_http(brain: LocalBrain, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", brain.port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


# -- HTTP routes --------------------------------------------------------------------------------


def test_http_routes_share_the_port_with_the_websocket_and_keep_the_connection(brain, creds):
    async def whoami(request: HttpRequest) -> HttpResponse:
        agent = brain.registry.authenticate(request.header("Authorization"))
        if agent is None:
            raise HttpError(401, "invalid bearer token")
        return HttpResponse.json(200, {"agent_id": agent.agent_id, "wait": request.arg("wait")},
                                 headers={"X-Z4J-Agent-Id": agent.agent_id})

    async def upload(request: HttpRequest) -> HttpResponse:
        return HttpResponse.json(200, {"frames": len(request.json()["frames"])})

    # The long-poll endpoints hold these paths; a module can take a path over.
    brain.server.router.unroute("GET", "/api/v1/agent/commands")
    brain.server.router.unroute("POST", "/api/v1/agent/events")
    brain.server.router.route("GET", "/api/v1/agent/commands", whoami)
    brain.server.router.route("POST", "/api/v1/agent/events", upload)
    with RawPeer.from_credentials(creds) as peer:
        peer.handshake()
        conn = _http(brain)
        conn.request("GET", "/api/v1/agent/commands?wait=0&max_frames=0",
                     headers={"Authorization": f"Bearer {creds.token}"})
        first = conn.getresponse()
        assert first.status == 200 and first.getheader("X-Z4J-Agent-Id") == creds.agent_id
        assert json_body(first) == {"agent_id": creds.agent_id, "wait": "0"}
        sock = conn.sock
        conn.request("POST", "/api/v1/agent/events", body=b'{"frames": ["a", "b"]}',
                     headers={"Content-Type": "application/json"})
        second = conn.getresponse()
        assert second.status == 200 and json_body(second) == {"frames": 2}
        assert conn.sock is sock  # HTTP/1.1 keep-alive: both requests on one connection
        conn.request("GET", "/api/v1/agent/commands")
        assert conn.getresponse().status == 401
        conn.close()
        peer.send_events([make_event()])  # the WebSocket session was not disturbed
        assert peer.recv_type("event_batch_ack").payload["accepted"] == 1


def json_body(response: http.client.HTTPResponse) -> object:
    return json.loads(response.read())


def test_http_router_answers_what_it_cannot_serve(brain):
    async def small(request: HttpRequest) -> HttpResponse:
        return HttpResponse.text(200, "ok")

    async def broken(request: HttpRequest) -> HttpResponse:
        raise RuntimeError("boom")

    brain.server.router.route("POST", "/small", small, max_body=16)
    brain.server.router.route("GET", "/broken", broken)
    with pytest.raises(ValueError, match="already routed"):
        brain.server.router.route("POST", "/small", small)
    conn = _http(brain)
    conn.request("GET", "/nowhere")
    assert conn.getresponse().status == 404
    conn = _http(brain)
    conn.request("GET", "/small")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("Allow") == "POST"
    conn = _http(brain)
    conn.request("POST", "/small", body=b"x" * 100_000)  # the client sees the 413, not a reset
    assert conn.getresponse().status == 413
    conn = _http(brain)
    conn.request("GET", "/broken")
    assert conn.getresponse().status == 500
    chunked = _raw_http(brain, b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411 ")
    assert _raw_http(brain, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    with pytest.raises(HttpError):
        HttpRequest("GET", "/x", {}, b"{not json").json()
    # A bad request did not hurt the brain: a good one still works.
    conn = _http(brain)
    conn.request("POST", "/small", body=b"hi")
    assert conn.getresponse().status == 200


def test_a_waiting_handler_is_cancelled_when_the_client_leaves(brain):
    started, cancelled = threading.Event(), threading.Event()

    async def long_poll(request: HttpRequest) -> HttpResponse:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return HttpResponse.json(200, {"frames": []})

    brain.server.router.route("GET", "/poll", long_poll)
    sock = socket.create_connection(("127.0.0.1", brain.port), timeout=10)
    sock.sendall(b"GET /poll?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert started.wait(10)
    sock.close()
    assert cancelled.wait(10)


# -- frames, sessions, commands, batches --------------------------------------------------------


def test_an_added_frame_handler_runs_after_the_builtin_one_and_can_reject(brain, creds):
    seen = []

    def on_heartbeat(session, frame, _events_text):
        seen.append((session.session_id, frame.id, session.agent.heartbeats))

    def on_registry_delta(session, frame, _events_text):
        raise FrameRejected(CloseCode.BAD_FRAME, "registry_delta not accepted here")

    brain.frames.add(FrameType.HEARTBEAT, on_heartbeat)
    brain.frames.add(FrameType.REGISTRY_DELTA, on_registry_delta)
    with RawPeer.from_credentials(creds) as peer:
        ack = peer.handshake()
        peer.send_signed("heartbeat", "hb_1", {"ts": 1})
        peer.send_signed("registry_delta", "rd_1", {})
        assert peer.wait_closed() == CloseCode.BAD_FRAME
    assert seen == [(ack["session_id"], "hb_1", 1)]


def test_open_hook_pins_a_command_to_its_session_and_it_is_never_redriven(brain, creds):
    pinned: list[str] = []

    async def activate(session):
        if not pinned:  # only the first session gets one, like an activation for a new epoch
            cmd = brain.delivery.create("schedule.fire", {"schedule_id": "s1"}, agent_id=session.agent.agent_id,
                                        session_id=session.session_id, issued_by=None)
            pinned.append(cmd.id)

    brain.hub.add_open_hook(activate)
    with RawPeer.from_credentials(creds) as first:
        first.handshake()
        frame = first.recv_type("command")
        assert frame.id == pinned[0] and frame.payload["issued_by"] is None
    # schedule.fire is re-driven to a new session when unpinned; pinned, it waits for its timeout.
    with RawPeer.from_credentials(creds) as second:
        second.handshake()
        later = brain.send_command("cancel_task", {"task_id": "t1"}, engine="celery")
        assert second.recv_type("command").id == later
    assert brain.command(pinned[0]).status == "dispatched"


def test_batch_hook_can_withhold_an_ack_after_the_batch_is_stored(brain, creds):
    def hold_snapshots(session, frame, events):
        return not any(e.get("kind") == "schedule.snapshot" for e in events)

    brain.ingest.add_hook(hold_snapshots)
    with RawPeer.from_credentials(creds) as peer:
        peer.handshake()
        peer.send_events([make_event("schedule.snapshot", task_id=None)])
        normal = peer.send_events([make_event("task.started", "t2")])
        assert peer.recv_type("event_batch_ack").payload["acked_id"] == normal
    assert brain.event_count(kind="schedule.snapshot") == 1


def test_a_server_side_module_pushes_signed_frames_into_a_live_session(brain, creds):
    with RawPeer.from_credentials(creds) as peer:
        peer.handshake()
        brain.wait_for_agent_online(creds.agent_id)
        (session,) = brain.hub.sessions(creds.agent_id)
        fid = str(uuid.uuid4())
        brain.server.call(session.send_signed("error", fid, {"code": "x", "message": "y", "fatal": False}))
        frame = peer.recv()  # verified with the session's HMAC binding and replay guard
        assert frame.type is FrameType.ERROR and frame.id == fid
    assert [f["id"] for f in brain.frames_sent("error")] == [fid]
