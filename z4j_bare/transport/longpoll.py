"""The HTTPS long-poll transport, as brain 1.13 serves it (protocol.md 8.4).

* ``open``: an HTTP connection to the brain (refused or untrusted: a connect failure).
* ``handshake``: a fresh session nonce (``X-Z4J-Session-Nonce``, the HMAC's session binding),
  then the non-claiming probe ``GET /api/v1/agent/commands?wait=0&max_frames=0``; the brain's
  answer names the agent and project ids (``X-Z4J-Agent-Id`` / ``X-Z4J-Project-Id``).
* Uploads (an ``Uploader`` thread): frames handed to ``send`` are signed at upload time, in
  order, and posted in batches to ``POST /api/v1/agent/events``; a batch is confirmed only when
  the brain's ``accepted`` equals what was sent (then every frame in it gets a delivered
  receipt), else it is signed again and re-posted. 413 halves the batch; 415/422 bisect down to
  the one frame the brain refuses, which gets a refusal receipt (content-rejected loss);
  409 ends the session (the next one gets a new nonce); 401/403 end it with the auth class;
  429/5xx wait (``Retry-After`` honoured) and retry.
* Commands (a ``Poller`` thread): ``GET /api/v1/agent/commands?wait=30`` in a loop of its own,
  so a long poll never delays an upload; every frame it brings is verified on the I/O thread in
  ``receive`` before anything reads it, exactly as on WebSocket.

Only the I/O thread calls ``send``/``receive``; the two threads report back through a queue,
and any failure of theirs is raised by the next ``receive``.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

from ..logs import get_logger
from ..protocol import DEFAULT_MAX_FRAME_BYTES, BackoffClass, Frame, SessionBinding
from .base import Outgoing, Receipt, SessionInfo, TlsSettings, Transport, TransportError
from .clock import date_offset
from .http import HttpAnswer, HttpConnection, HttpFailure, shown_url

log = get_logger(__name__)

EVENTS_PATH = "/api/v1/agent/events"
COMMANDS_PATH = "/api/v1/agent/commands"
POLL_WAIT_SECONDS = 30
POLL_MAX_FRAMES = 50
MAX_UPLOAD_FRAMES = 500
# The brain refuses any REST body over Z4J_MAX_PAYLOAD_SIZE_BYTES with 413 (default 8 KiB, and
# brain 1.13 applies it to uploads too). Uploads start at that size and grow while the brain
# takes them, up to MAX_UPLOAD_BYTES (one POST's round trip stays well inside the upload
# timeout: the brain stores every frame before it answers); a 413 halves them again.
INITIAL_UPLOAD_BYTES = 8192
MIN_UPLOAD_BYTES = 1024
MAX_UPLOAD_BYTES = 4 * 2**20
GROW_WHEN_FULL = 0.7
# A frame travels as a JSON string inside the body, so its quotes and backslashes are escaped:
# frames are built this much smaller than the body budget (the packing measures exactly).
ESCAPE_ALLOWANCE = 1.25
BODY_OVERHEAD = 64
RETRY_INITIAL, RETRY_MAX = 0.5, 5.0
MAX_ZERO_PROGRESS = 20
AUTH_REFUSALS = frozenset({"project_inactive", "ip_denied"})


def _canonical_uuid(value: str | None) -> str | None:
    try:
        return str(uuid.UUID(value)) if value else None
    except ValueError:
        return None


def classify_refusal(answer: HttpAnswer, what: str) -> TransportError:
    """The TransportError for an HTTP status the session cannot go on with."""
    status = answer.status
    if status == 401:
        return TransportError(f"{what}: HTTP 401, the brain refused the token", BackoffClass.AUTH)
    if status == 403:
        body = answer.json()
        code = body.get("error") if isinstance(body, dict) else None
        if code in AUTH_REFUSALS:
            return TransportError(f"{what}: HTTP 403 {code}", BackoffClass.AUTH)
        return TransportError(f"{what}: HTTP 403", BackoffClass.CONNECTION)
    if status == 409:
        return TransportError(f"{what}: HTTP 409, the brain invalidated this long-poll session; "
                              "reconnecting with a fresh nonce")
    return TransportError(f"{what}: HTTP {status}")


class LongPollTransport(Transport):
    name = "longpoll"
    retries_sends = True

    def __init__(self, brain_url: str, token: str, key: bytes, *, agent_id: str = "", timeout: float = 10.0,
                 tls: TlsSettings | None = None, heartbeat: float = 10.0, upload_timeout: float = 90.0,
                 stopping: threading.Event | None = None, poll_wait: float = POLL_WAIT_SECONDS) -> None:
        super().__init__(key)
        self.url = shown_url(brain_url, EVENTS_PATH.rsplit("/", 1)[0])
        self._brain_url = brain_url
        self._token = token
        self._agent_id = agent_id
        self._timeout = timeout
        self._tls = tls or TlsSettings()
        self._heartbeat = heartbeat
        self._upload_timeout = upload_timeout
        self._poll_wait = poll_wait
        # The brain holds a command poll open up to poll_wait (the poll's own timeout is 10 s more).
        self.quiet_seconds = poll_wait + 10.0
        self._stopping = stopping or threading.Event()
        self._closed = threading.Event()
        self._http = HttpConnection(brain_url, timeout=timeout, tls=self._tls)
        self._headers: dict[str, str] = {}
        self._inbound: queue.SimpleQueue[bytes | Receipt | TransportError] = queue.SimpleQueue()
        self._uploader: Uploader | None = None
        self._poller: Poller | None = None

    def __repr__(self) -> str:
        return f"LongPollTransport(url={self.url!r}, session={'open' if self._uploader else 'none'})"

    # -- the interface -------------------------------------------------------------------------
    def open(self) -> None:
        try:
            self._http.connect()
        except HttpFailure as exc:
            raise TransportError(f"cannot reach the brain's long-poll API: {exc}", timed_out=exc.timed_out) from None

    def handshake(self, hello: Mapping[str, Any], timeout: float) -> SessionInfo:
        info = self.establish(hello, timeout)
        self._uploader = Uploader(self)
        self._poller = Poller(self)
        return info

    def establish(self, hello: Mapping[str, Any], timeout: float) -> SessionInfo:
        """The handshake without the upload and poll threads (doctor uses it with ``upload_now``)."""
        nonce = secrets.token_urlsafe(16)
        self._headers = self._session_headers(hello, nonce)
        answer = self._probe(timeout)
        agent_id = _canonical_uuid(answer.header("x-z4j-agent-id")) or _canonical_uuid(self._agent_id)
        project_id = _canonical_uuid(answer.header("x-z4j-project-id"))
        if agent_id is None or project_id is None:
            raise TransportError("the long-poll probe's answer lacks X-Z4J-Agent-Id / X-Z4J-Project-Id: this is "
                                 "not a z4j brain 1.13 (or a proxy strips its headers)", BackoffClass.PROTOCOL)
        offset = date_offset(answer.header("date"), time.time())
        info = self._bind(SessionInfo(self.name, SessionBinding(agent_id, project_id, nonce), self._heartbeat,
                                      DEFAULT_MAX_FRAME_BYTES, None, offset, "date" if offset is not None else None))
        self.last_heard = time.monotonic()
        for raw in self._frames_of(answer):
            self._inbound.put(raw)
        return info

    def upload_now(self, frames: list[Outgoing], timeout: float) -> HttpAnswer:
        """One signed upload on this thread, its answer as it came (doctor's proof of the key)."""
        bodies = []
        for frame in frames:
            data = self.sign(frame)
            if data is None:
                raise TransportError(f"{frame.type} {frame.id} is over the brain's frame limit")
            bodies.append(data.decode("utf-8"))
        body = json.dumps({"frames": bodies}, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        try:
            return self._http.request("POST", EVENTS_PATH, self.headers(**{"Content-Type": "application/json"}), body,
                                      timeout=timeout)
        except HttpFailure as exc:
            raise TransportError(f"upload failed: {exc}") from None

    def send(self, frame: Outgoing) -> None:
        if self._uploader is None:
            raise TransportError("send before the handshake")
        self._uploader.add(frame)

    def receive(self, timeout: float) -> Frame | Receipt | None:
        try:
            item = self._inbound.get(timeout=timeout) if timeout > 0 else self._inbound.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, TransportError):
            self._inbound.put(item)  # the session is over: every later call says so too
            raise item
        if isinstance(item, Receipt):
            return item
        return self._verify(item)

    def close(self, code: int = 1000) -> None:
        self._closed.set()
        for worker in (self._uploader, self._poller):
            if worker is not None:
                worker.stop()
        self._http.close()

    def abort(self) -> None:
        self._closed.set()
        for worker in (self._uploader, self._poller):
            if worker is not None:
                worker.abort()
        self._http.abort()

    # -- for the worker threads ----------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def new_http(self) -> HttpConnection:
        return HttpConnection(self._brain_url, timeout=self._timeout, tls=self._tls)

    def headers(self, **extra: str) -> dict[str, str]:
        return {**self._headers, **extra}

    def sign(self, frame: Outgoing) -> bytes | None:
        """Signed bytes, or None when the frame is over the brain's 1 MiB frame limit."""
        return self._sign_within_limit(frame)

    def report(self, item: Receipt | TransportError | bytes) -> None:
        if isinstance(item, TransportError):
            if self._closed.is_set():
                return
            self._closed.set()
        self.last_heard = time.monotonic()
        self._inbound.put(item)

    @property
    def frame_limit(self) -> int:
        budget = self._uploader.budget if self._uploader is not None else INITIAL_UPLOAD_BYTES
        return min(DEFAULT_MAX_FRAME_BYTES, int((budget - BODY_OVERHEAD) / ESCAPE_ALLOWANCE))

    @property
    def upload_timeout(self) -> float:
        return self._upload_timeout

    @property
    def poll_wait(self) -> float:
        return self._poll_wait

    @staticmethod
    def _frames_of(answer: HttpAnswer) -> list[bytes]:
        body = answer.json()
        frames = body.get("frames") if isinstance(body, dict) else None
        return [f.encode("utf-8") for f in frames if isinstance(f, str)] if isinstance(frames, list) else []

    def _session_headers(self, hello: Mapping[str, Any], nonce: str) -> dict[str, str]:
        features = [f for f in hello.get("runtime_features") or [] if isinstance(f, str)]
        caps = hello.get("capabilities") or {}
        contracts = [f"{engine}=1" for engine, tokens in caps.items()
                     if isinstance(tokens, list) and "retry_by_reference_v1" in tokens]
        headers = {"Authorization": f"Bearer {self._token}", "X-Z4J-Session-Nonce": nonce,
                   "Accept": "application/json", "User-Agent": "z4j-bare"}
        if features:
            headers["X-Z4J-Runtime-Features"] = ",".join(features)
        if contracts:
            headers["X-Z4J-Retry-Contracts"] = ",".join(contracts)
        return headers

    def _probe(self, timeout: float) -> HttpAnswer:
        """The non-claiming connect probe (a brain before 1.7.1 refuses max_frames=0 with 422)."""
        for max_frames in (0, 1):
            try:
                answer = self._http.request("GET", f"{COMMANDS_PATH}?wait=0&max_frames={max_frames}",
                                            self._headers, timeout=timeout)
            except HttpFailure as exc:
                raise TransportError(f"long-poll probe failed: {exc}", timed_out=exc.timed_out) from None
            if answer.status == 200:
                return answer
            if answer.status != 422:
                break
        if answer.status == 404:
            raise TransportError(f"long-poll probe: HTTP 404, no z4j brain API at {self.url} (brain_url must be "
                                 "the brain's base URL)")
        raise classify_refusal(answer, "long-poll probe")


class _Worker:
    """A daemon thread of the transport with its own HTTP connection."""

    thread_name = "z4j-longpoll"

    def __init__(self, transport: LongPollTransport) -> None:
        self._t = transport
        self._http = transport.new_http()
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._main, name=self.thread_name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.run()
        except TransportError as exc:
            self._t.report(exc)
        except Exception as exc:  # noqa: BLE001 - a bug here ends the session, never the host
            log.error("longpoll.worker_crashed", worker=self.thread_name, error_type=type(exc).__name__)
            self._t.report(TransportError(f"long-poll {self.thread_name} failed: {type(exc).__name__}",
                                          BackoffClass.PROTOCOL))
        finally:
            self._http.close()

    def run(self) -> None:
        raise NotImplementedError

    def pause(self, seconds: float) -> None:
        with self._wake:
            self._wake.wait_for(lambda: self._t.closed, timeout=seconds)

    def stop(self) -> None:
        with self._wake:
            self._wake.notify_all()
        self._http.abort()
        self._thread.join(0.5)

    def abort(self) -> None:
        with self._wake:
            self._wake.notify_all()
        self._http.abort()


class Poller(_Worker):
    """``GET /commands?wait=30`` in a loop; frames go to the I/O thread for verification."""

    thread_name = "z4j-longpoll-commands"

    def run(self) -> None:
        t = self._t
        delay = RETRY_INITIAL
        path = f"{COMMANDS_PATH}?wait={int(t.poll_wait)}&max_frames={POLL_MAX_FRAMES}"
        while not t.closed:
            try:
                answer = self._http.request("GET", path, t.headers(), timeout=t.poll_wait + 10)
            except HttpFailure as exc:
                if t.closed:
                    return
                raise TransportError(f"command poll failed: {exc}") from None
            if answer.status == 200:
                delay = RETRY_INITIAL
                for raw in LongPollTransport._frames_of(answer):
                    t.report(raw)
                continue
            if answer.status in (401, 403, 409):
                raise classify_refusal(answer, "command poll")
            wait = answer.retry_after()
            self.pause(min(t.poll_wait, wait) if wait is not None else delay)
            delay = min(delay * 2, RETRY_MAX)


class Uploader(_Worker):
    """Posts queued frames in batches until the brain accepts them (see the module docstring)."""

    thread_name = "z4j-longpoll-uploads"

    def __init__(self, transport: LongPollTransport) -> None:
        self._queue: deque[Outgoing] = deque()
        self._limit = MAX_UPLOAD_FRAMES
        self._zero_progress = 0
        self._delay = RETRY_INITIAL
        #: Body bytes an upload may have now; ``_ceiling``: the smallest body the brain refused.
        self.budget = INITIAL_UPLOAD_BYTES
        self._ceiling: int | None = None
        super().__init__(transport)

    def add(self, frame: Outgoing) -> None:
        with self._wake:
            self._queue.append(frame)
            self._wake.notify_all()

    def run(self) -> None:
        while not self._t.closed:
            with self._wake:
                self._wake.wait_for(lambda: self._queue or self._t.closed)
                batch = list(self._queue)[: self._limit]
            if batch and not self._t.closed:
                self._upload(batch)

    def _pack(self, batch: list[Outgoing]) -> tuple[list[Outgoing], bytes]:
        """The frames that fit the body budget (at least one), signed now, in order, and the body."""
        frames: list[Outgoing] = []
        parts: list[str] = []
        size = len('{"frames":[]}')
        for frame in batch:
            data = self._t.sign(frame)
            if data is None:  # over the brain's 1 MiB frame limit: refused once it heads the queue
                if not frames:
                    self._done([frame])
                    self._t.report(Receipt(frame.key, False, "signed frame over the brain's 1 MiB frame limit"))
                break
            part = json.dumps(data.decode("utf-8"), ensure_ascii=False)
            n = len(part.encode("utf-8")) + 1
            if frames and size + n > self.budget:
                break
            frames.append(frame)
            parts.append(part)
            size += n
        return frames, ('{"frames":[' + ",".join(parts) + "]}").encode("utf-8")

    def _upload(self, batch: list[Outgoing]) -> None:
        frames, body = self._pack(batch)
        if not frames:
            return
        try:
            answer = self._http.request("POST", EVENTS_PATH, self._t.headers(**{"Content-Type": "application/json"}),
                                        body, timeout=self._t.upload_timeout)
        except HttpFailure as exc:
            if not self._t.closed:
                raise TransportError(f"upload failed: {exc}") from None
            return
        self._answered(frames, len(body), answer)

    def _answered(self, frames: list[Outgoing], size: int, answer: HttpAnswer) -> None:
        n = len(frames)
        if answer.status == 200:
            reply = answer.json()
            accepted = reply.get("accepted") if isinstance(reply, dict) else None
            if accepted == n:
                self._done(frames)
                self._grow(size)
                for frame in frames:
                    self._t.report(Receipt(frame.key))
                return
            if isinstance(reply, dict) and reply.get("error_code") == "scheduler_upgrade_required":
                raise TransportError("the brain refused an upload: scheduler_upgrade_required", BackoffClass.INCOMPATIBLE)
            self._retry(f"brain accepted {accepted} of {n} frames", None)
        elif answer.status == 413:
            self._too_large(frames, size)
        elif answer.status in (415, 422):
            self._refused(frames, answer.status)
        elif answer.status in (401, 403, 409):
            raise classify_refusal(answer, "upload")
        else:
            self._retry(f"HTTP {answer.status}", answer.retry_after())

    def _grow(self, size: int) -> None:
        if size < GROW_WHEN_FULL * self.budget:
            return
        grown = self.budget * 2 if self._ceiling is None else min(self.budget * 2, self._ceiling - 1)
        self.budget = max(self.budget, min(MAX_UPLOAD_BYTES, grown))

    def _too_large(self, frames: list[Outgoing], size: int) -> None:
        """413: the body was over the brain's limit. Halve the budget; a single frame goes back to
        its owner to be built smaller (event batches) or counted as refused (the rest)."""
        self._ceiling = size if self._ceiling is None else min(self._ceiling, size)
        self.budget = max(MIN_UPLOAD_BYTES, min(self.budget, size // 2))
        log.info("longpoll.upload_too_large", body_bytes=size, frames=len(frames), budget=self.budget)
        if len(frames) > 1:
            self._limit = max(1, len(frames) // 2)
            return
        self._done(frames)
        self._t.report(Receipt(frames[0].key, False, f"the brain refused a {size}-byte upload (HTTP 413)",
                               too_large=True))

    def _refused(self, frames: list[Outgoing], status: int) -> None:
        """415/422: bisect down to the frame the brain refuses, and drop it."""
        if len(frames) > 1:
            self._limit = max(1, len(frames) // 2)
            return
        self._done(frames)
        self._t.report(Receipt(frames[0].key, False, f"the brain refused the frame (HTTP {status})"))
        log.warning("longpoll.frame_refused", status=status, frame_type=frames[0].type)

    def _retry(self, why: str, retry_after: float | None) -> None:
        self._zero_progress += 1
        if self._zero_progress >= MAX_ZERO_PROGRESS:
            raise TransportError(f"uploads made no progress {MAX_ZERO_PROGRESS} times in a row ({why})")
        wait = min(self._t.poll_wait, retry_after) if retry_after is not None else self._delay
        self._delay = min(self._delay * 2, RETRY_MAX)
        log.info("longpoll.upload_retry", reason=why, retry_in_s=round(wait, 2), attempt=self._zero_progress)
        self.pause(wait)

    def _done(self, frames: list[Outgoing]) -> None:
        with self._wake:
            for _ in frames:
                self._queue.popleft()
        self._zero_progress = 0
        self._delay = RETRY_INITIAL
        self._limit = min(MAX_UPLOAD_FRAMES, self._limit * 2)
