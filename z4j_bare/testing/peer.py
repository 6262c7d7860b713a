"""RawPeer: a minimal wire-level agent for driving a brain in tests (not the agent runtime).

Speaks protocol.md with the ``protocol`` package and websockets' sync client, and lets a test
send anything, including frames a correct agent never would.
"""

from __future__ import annotations

import uuid
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from ..protocol import (
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


def default_hello(**overrides: Any) -> dict[str, Any]:
    hello: dict[str, Any] = {
        "protocol_version": "2",
        "agent_version": "2.0.0",
        "framework": "bare",
        "engines": ["celery"],
        "schedulers": [],
        "capabilities": {"celery": ["cancel_task", "retry_by_reference_v1", "retry_task", "submit_task"]},
        "host": {},
        "worker_id": f"bare-{uuid.uuid4().hex[:8]}",
        "worker_role": None,
        "worker_pid": 1,
        "worker_started_at": utc_now_text(),
        "runtime_features": ["retry_by_reference"],
    }
    hello.update(overrides)
    return hello


def make_event(kind: str = "task.started", task_id: str | None = "t1", *, engine: str = "celery",
               occurred_at: str | None = None, **data: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "kind": kind,
        "engine": engine,
        "task_id": task_id if task_id is not None else "",
        "occurred_at": occurred_at or utc_now_text().replace("Z", "+00:00"),
        "data": {"task_name": "demo.add", "queue": "default", "worker": None, **data},
    }


class RawPeer:
    """One WebSocket connection to ``<brain_url>/ws/agent``."""

    def __init__(self, brain_url: str, token: str | None, hmac_secret: str, *, path: str = "/ws/agent") -> None:
        self.url = brain_url.replace("https://", "wss://").replace("http://", "ws://").rstrip("/") + path
        self._token = token
        self._key = decode_hmac_secret(hmac_secret)
        self.ws: ClientConnection | None = None
        self.hello_ack: dict[str, Any] | None = None
        self.signer: Signer | None = None
        self.verifier: Verifier | None = None

    def __repr__(self) -> str:
        return f"RawPeer(url={self.url!r}, session={self.hello_ack and self.hello_ack.get('session_id')!r})"

    @classmethod
    def from_credentials(cls, creds: Any, **kwargs: Any) -> RawPeer:
        return cls(creds.brain_url, creds.token, creds.hmac_secret, **kwargs)

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, timeout: float = 5.0) -> RawPeer:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token is not None else {}
        self.ws = connect(self.url, additional_headers=headers, max_size=None, open_timeout=timeout,
                          ping_interval=None, close_timeout=2, legacy=True)
        return self

    def handshake(self, timeout: float = 5.0, **hello_overrides: Any) -> dict[str, Any]:
        """Open (if needed), send hello, read hello_ack and bind signer/verifier."""
        if self.ws is None:
            self.open(timeout)
        self.send(encode_unsigned(FrameType.HELLO, new_frame_id("hello_", 16), default_hello(**hello_overrides)))
        ack = parse_frame(self.recv_raw(timeout))
        if ack.type is not FrameType.HELLO_ACK:
            raise AssertionError(f"expected hello_ack, got {ack.type.value}")
        self.hello_ack = ack.payload
        binding = SessionBinding(ack.payload["agent_id"], ack.payload["project_id"], ack.payload["session_id"])
        self.signer = Signer(self._key, binding)
        self.verifier = Verifier(self._key, binding)
        return ack.payload

    def send(self, data: bytes | str) -> None:
        assert self.ws is not None, "call open() or handshake() first"
        self.ws.send(data)

    def sign(self, ftype: str, frame_id: str, payload: dict[str, Any]) -> bytes:
        assert self.signer is not None, "call handshake() first"
        return self.signer.sign(ftype, frame_id, payload)

    def send_signed(self, ftype: str, frame_id: str, payload: dict[str, Any]) -> bytes:
        data = self.sign(ftype, frame_id, payload)
        self.send(data)
        return data

    def event_batch(self, events: list[dict[str, Any]], frame_id: str | None = None) -> tuple[str, bytes]:
        assert self.signer is not None, "call handshake() first"
        fid = frame_id or new_frame_id("ev_", 32)
        return fid, self.signer.sign_event_batch(fid, [canonical_text(e) for e in events])

    def send_events(self, events: list[dict[str, Any]], frame_id: str | None = None) -> str:
        fid, data = self.event_batch(events, frame_id)
        self.send(data)
        return fid

    def recv_raw(self, timeout: float = 5.0) -> bytes | str:
        assert self.ws is not None, "call open() or handshake() first"
        return self.ws.recv(timeout=timeout)

    def recv(self, timeout: float = 5.0) -> Frame:
        """Next frame, verified (HMAC + replay guard) unless it is an unsigned type."""
        raw = self.recv_raw(timeout)
        assert self.verifier is not None, "call handshake() first"
        return self.verifier.verify(raw)

    def recv_type(self, ftype: str, timeout: float = 5.0) -> Frame:
        """Skip frames of other types (e.g. commands) until one of ``ftype`` arrives."""
        while True:
            frame = self.recv(timeout)
            if frame.type.value == ftype:
                return frame

    def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Read until the brain closes; returns its close code (None if the TCP stream just ended)."""
        assert self.ws is not None, "call open() first"
        try:
            while True:
                self.ws.recv(timeout=timeout)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
