"""A man in the middle for long-poll: relays HTTP to the real brain and edits one command answer.

``mode`` decides what happens to the first ``GET /api/v1/agent/commands`` answer that carries
frames (later answers pass untouched):

* ``tampered``: the command's ``task_id`` is changed after the brain signed it.
* ``replayed``: the signed frame is delivered twice in the same answer.
* ``stale``: the frame's ``ts`` is moved 120 s into the past and it is signed again with the
  agent's own key and session binding (only the clock check can catch it).

Everything else (uploads, probes) is relayed byte for byte. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from z4j_bare.protocol import compute_hmac, decode_hmac_secret

COMMANDS = "/api/v1/agent/commands"
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class LongPollRelay:
    def __init__(self, brain_url: str, hmac_secret: str, mode: str) -> None:
        parts = urlsplit(brain_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.key = decode_hmac_secret(hmac_secret)
        self.mode = mode
        self.armed = True
        self.edited: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def edit(self, body: bytes, nonce: str, agent_id: str, project_id: str) -> bytes:
        reply = json.loads(body)
        frames = reply.get("frames") or []
        if not frames or not self.armed:
            return body
        self.armed = False
        frame = json.loads(frames[0])
        self.edited.append(frame)
        if self.mode == "tampered":
            frame["payload"]["parameters"]["task_id"] = "forged-by-the-relay"
            frames[0] = json.dumps(frame)
        elif self.mode == "replayed":
            frames.insert(1, frames[0])
        elif self.mode == "stale":
            frame.pop("hmac")
            frame["ts"] = (datetime.now(UTC) - timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            binding = {"agent_id": agent_id, "project_id": project_id, "session_id": nonce}
            frame["hmac"] = compute_hmac(self.key, {**frame, **binding})
            frames[0] = json.dumps(frame)
        reply["frames"] = frames
        return json.dumps(reply).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._relay()

            def do_POST(self) -> None:
                self._relay()

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                upstream = http.client.HTTPConnection(*relay.upstream, timeout=120)
                try:
                    try:
                        upstream.request(self.command, self.path, body=body or None, headers=headers)
                        answer = upstream.getresponse()
                        data = answer.read()
                    except (OSError, http.client.HTTPException):  # the brain went away: like a proxy, 502
                        self.send_error(502)
                        return
                    if answer.status == 200 and self.path.startswith(COMMANDS):
                        data = relay.edit(data, self.headers.get("X-Z4J-Session-Nonce", ""),
                                          answer.getheader("X-Z4J-Agent-Id", ""),
                                          answer.getheader("X-Z4J-Project-Id", ""))
                    self.send_response(answer.status)
                    for name, value in answer.getheaders():
                        if name.lower() not in HOP_HEADERS:
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    upstream.close()

        return Handler
