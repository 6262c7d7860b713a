"""Plain HTTP endpoints on the brain's port, next to the ``/ws/agent`` WebSocket upgrade.

A server-side module registers ``router.route("GET", "/api/v1/...", handler)``; the handler is
``async def handler(request: HttpRequest) -> HttpResponse`` and runs on the brain's loop. It
may wait (long-poll): if the client goes away or the brain pauses, the handler is cancelled.
Raising ``HttpError`` answers with that status; any other exception answers 500 (logged).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..logs import get_logger

log = get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class HttpRequest:
    """One request; header names are lower-case (repeated headers joined with ``, ``)."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes = b""
    peer: Any = None
    path: str = field(init=False)
    query: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        object.__setattr__(self, "path", parts.path)
        object.__setattr__(self, "query", parse_qs(parts.query, keep_blank_values=True))

    def __repr__(self) -> str:  # headers and body stay out: they carry bearer tokens and frames
        return f"HttpRequest({self.method} {self.path}, {len(self.body)} bytes)"

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        """The body as JSON; ``HttpError(400)`` if it is not."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "request body is not valid JSON") from None


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, text: str, headers: dict[str, str] | None = None) -> HttpResponse:
        return cls(status, text.encode("utf-8"), headers=dict(headers or {}))

    @classmethod
    def json(cls, status: int, value: Any, headers: dict[str, str] | None = None) -> HttpResponse:
        body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return cls(status, body, "application/json", dict(headers or {}))

    def encode(self, *, keep_alive: bool, server: str, now: float | None = None) -> bytes:
        """The response bytes; ``now`` (the brain's clock) gives the Date header, as every brain sends."""
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Status"
        date = formatdate(time.time() if now is None else now, usegmt=True)
        lines = [f"HTTP/1.1 {self.status} {reason}", f"Date: {date}", f"Server: {server}",
                 f"Content-Type: {self.content_type}",
                 f"Content-Length: {len(self.body)}", f"Connection: {'keep-alive' if keep_alive else 'close'}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class HttpError(Exception):
    """Raise from a handler to answer ``status`` with a plain-text ``message``."""

    def __init__(self, status: int, message: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message or str(status))
        self.response = HttpResponse.text(status, (message or HTTPStatus(status).phrase) + "\n", headers)


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


@dataclass(frozen=True)
class Route:
    handler: HttpHandler
    max_body: int


class HttpRouter:
    """Exact-path routes per method; 404 for an unknown path, 405 (with ``Allow``) for a wrong method."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Route]] = {}

    def route(self, method: str, path: str, handler: HttpHandler, *, max_body: int = MAX_BODY_BYTES) -> None:
        """Serve ``method path``; bodies over ``max_body`` bytes get 413 before the handler runs."""
        methods = self._routes.setdefault(path, {})
        if method.upper() in methods:
            raise ValueError(f"HttpRouter: {method.upper()} {path} is already routed")
        methods[method.upper()] = Route(handler, max_body)

    def unroute(self, method: str, path: str) -> None:
        self._routes.get(path, {}).pop(method.upper(), None)

    def find(self, method: str, path: str) -> Route | HttpResponse:
        """The route for a request head, or the error response to send instead."""
        methods = self._routes.get(path)
        if not methods:
            return HttpResponse.text(404, "z4j agents connect to /ws/agent\n")
        route = methods.get(method.upper())
        if route is None:
            return HttpResponse.text(405, "method not allowed\n", {"Allow": ", ".join(sorted(methods))})
        return route

    async def respond(self, route: Route, request: HttpRequest) -> HttpResponse:
        try:
            response = await route.handler(request)
        except HttpError as exc:
            return exc.response
        except Exception:
            log.exception("brain.http_handler_failed", method=request.method, path=request.path)
            return HttpResponse.text(500, "internal error\n")
        if not isinstance(response, HttpResponse):
            log.error("brain.http_handler_bad_return", path=request.path, type=type(response).__name__)
            return HttpResponse.text(500, "internal error\n")
        return response
