"""Close codes and error frames mapped to reconnect backoff classes (protocol.md 4.4, 4.5, 8.1)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BackoffClass(StrEnum):
    CONNECTION = "connection"
    PROTOCOL = "protocol"
    AUTH = "auth"
    INCOMPATIBLE = "incompatible"


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial: float
    maximum: float
    jitter: float = 0.3


BACKOFF_POLICIES: dict[BackoffClass, BackoffPolicy] = {
    BackoffClass.CONNECTION: BackoffPolicy(1.0, 30.0),
    BackoffClass.PROTOCOL: BackoffPolicy(1.0, 60.0),
    BackoffClass.AUTH: BackoffPolicy(10.0, 600.0),
    BackoffClass.INCOMPATIBLE: BackoffPolicy(120.0, 3600.0),
}

# Precedence when several failures land in one session: the most severe wins.
SEVERITY = (BackoffClass.AUTH, BackoffClass.INCOMPATIBLE, BackoffClass.PROTOCOL, BackoffClass.CONNECTION)


class CloseCode:
    NORMAL = 1000
    GOING_AWAY = 1001
    INTERNAL_ERROR = 1011
    DISPLACED = 4002
    REVOKED = 4003
    BAD_FRAME = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    IDLE_TIMEOUT = 4408
    UPGRADE_REQUIRED = 4426
    VERSION_SKEW = 4427
    RATE_LIMITED = 4429


CLOSE_REASONS: dict[int, str] = {
    1000: "normal close",
    1001: "brain going away",
    1011: "brain internal error",
    4002: "displaced by a newer connection for the same agent and worker",
    4003: "agent revoked or project archived",
    4400: "malformed, oversize or unexpected frame",
    4401: "bearer token unknown, malformed or revoked",
    4403: "forbidden: source IP not allowed, or a frame failed HMAC/replay checks",
    4408: "idle timeout: no frame received in time",
    4426: "protocol version not supported by the brain",
    4427: "agent version outside the supported skew",
    4429: "connect rate limit or per-agent worker cap",
}

TERMINAL_ERROR_CODES = frozenset({"scheduler_upgrade_required", "agent_incompatible", "protocol_incompatible"})


def classify_close(code: int | None, *, during_handshake: bool) -> BackoffClass:
    if code in (CloseCode.UNAUTHORIZED, CloseCode.REVOKED):
        return BackoffClass.AUTH
    if code == CloseCode.FORBIDDEN:
        return BackoffClass.AUTH if during_handshake else BackoffClass.CONNECTION
    if code in (CloseCode.UPGRADE_REQUIRED, CloseCode.VERSION_SKEW):
        return BackoffClass.INCOMPATIBLE
    return BackoffClass.CONNECTION


def classify_http_status(status: int | None) -> BackoffClass:
    return BackoffClass.AUTH if status == 401 else BackoffClass.CONNECTION


def classify_error_frame(code: str, fatal: bool) -> BackoffClass | None:
    """None for a non-fatal error frame (log only)."""
    if not fatal:
        return None
    return BackoffClass.INCOMPATIBLE if code in TERMINAL_ERROR_CODES else BackoffClass.PROTOCOL


def describe_close(code: int | None) -> str:
    if code is None:
        return "connection ended without a close frame"
    return CLOSE_REASONS.get(code, f"close code {code}")
