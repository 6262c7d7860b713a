"""One keep-alive HTTP/1.1 connection for the long-poll transport (http.client; no redirects).

Owned by one thread; ``abort()`` may be called from any other to make a blocked request return.
A request that fails on a connection the server may have closed while it sat idle is retried
once on a fresh connection (``request``), which is what every keep-alive client has to do.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .base import TlsSettings

# Servers close idle keep-alive connections after a few seconds (uvicorn: 5 s); reopen before
# that instead of learning it from a failed request.
IDLE_REOPEN_SECONDS = 4.0
MAX_RESPONSE_BYTES = 64 * 2**20


class HttpFailure(Exception):
    """No HTTP answer at all (refused, reset, timed out, TLS failure). ``timed_out``: the request
    waited its whole timeout (a brain that accepts connections but answers nothing)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class _Closed(Exception):
    """The server closed the connection before answering (a kept-alive connection gone stale)."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    def retry_after(self) -> float | None:
        value = self.header("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                return None

    def server_time(self) -> float | None:
        """The ``Date`` header as POSIX seconds (1 s resolution)."""
        value = self.header("date")
        try:
            return parsedate_to_datetime(value).timestamp() if value else None
        except (TypeError, ValueError):
            return None


def api_base(brain_url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of the brain's HTTP API; credentials in the URL dropped."""
    parts = urlsplit(brain_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme.lower(), parts.scheme.lower())
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, parts.hostname or "", port, parts.path.rstrip("/")


def shown_url(brain_url: str, path: str) -> str:
    parts = urlsplit(brain_url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/") + path, "", ""))


class HttpConnection:
    def __init__(self, brain_url: str, *, timeout: float, tls: TlsSettings) -> None:
        self.scheme, self.host, self.port, self.prefix = api_base(brain_url)
        self._timeout = timeout
        self._tls = tls
        self._conn: http.client.HTTPConnection | None = None
        self._used_at = 0.0
        self._aborted = False

    def connect(self) -> None:
        """Open the TCP (and TLS) connection now, so that a refused or untrusted server is known at once."""
        conn = self._fresh()
        try:
            conn.connect()
        except ssl.SSLError as exc:
            raise HttpFailure(f"TLS failure: {exc.reason or type(exc).__name__}") from None
        except OSError as exc:
            raise HttpFailure(f"cannot connect: {type(exc).__name__}: {exc}",
                              timed_out=isinstance(exc, TimeoutError)) from None
        self._used_at = time.monotonic()

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None,
                *, timeout: float | None = None) -> HttpAnswer:
        """One request and its whole answer; HttpFailure when no answer came (after one retry on a
        fresh connection if the kept-alive one turned out to be closed by the server)."""
        if self._conn is not None and time.monotonic() - self._used_at >= IDLE_REOPEN_SECONDS:
            self.close()
        reused = self._conn is not None
        try:
            return self._once(method, path, headers, body, timeout)
        except _Closed:
            if not reused or self._aborted:
                raise HttpFailure("the server closed the connection without answering") from None
        try:
            return self._once(method, path, headers, body, timeout)
        except _Closed:
            raise HttpFailure("the server closed the connection without answering") from None

    def _once(self, method: str, path: str, headers: dict[str, str], body: bytes | None,
              timeout: float | None) -> HttpAnswer:
        if self._aborted:
            raise HttpFailure("aborted")
        conn = self._conn or self._fresh()
        conn.timeout = timeout or self._timeout
        try:
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            conn.request(method, self.prefix + path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read(MAX_RESPONSE_BYTES + 1)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self.close()
            raise _Closed from None
        except ssl.SSLError as exc:
            self.close()
            raise HttpFailure(f"TLS failure: {exc.reason or type(exc).__name__}") from None
        except TimeoutError:
            self.close()
            raise HttpFailure(f"no answer within {conn.timeout:g} s", timed_out=True) from None
        except (http.client.HTTPException, OSError) as exc:
            self.close()
            raise HttpFailure(f"request failed: {type(exc).__name__}: {exc}") from None
        if len(data) > MAX_RESPONSE_BYTES:
            self.close()
            raise HttpFailure(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
        if response.will_close:
            self.close()
        self._used_at = time.monotonic()
        return HttpAnswer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)

    def _fresh(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self._timeout, context=self._tls.context())
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self._timeout)
        self._conn = conn
        return conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def abort(self) -> None:
        """From any thread: a blocked request returns at once; later ones fail."""
        self._aborted = True
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
