"""The runtime's states and the one table that says which state follows which.

Everything else (the I/O loop, the diagram in statecharts/, ``python -m z4j_bare statechart``)
is derived from ``TRANSITIONS``.
"""

from __future__ import annotations

from enum import StrEnum


class RuntimeState(StrEnum):
    INIT = "init"
    CONNECTING = "connecting"
    HANDSHAKE = "handshake"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


S = RuntimeState

# Each edge: trigger, source, dest, and why it exists (rendered into statecharts/).
TRANSITIONS: list[dict[str, str]] = [
    {"trigger": "start", "source": S.INIT, "dest": S.CONNECTING,
     "why": "start() launched the I/O thread; open the WebSocket"},
    {"trigger": "connected", "source": S.CONNECTING, "dest": S.HANDSHAKE,
     "why": "the upgrade succeeded; send hello and wait for hello_ack"},
    {"trigger": "connect_failed", "source": S.CONNECTING, "dest": S.CONNECTING,
     "why": "network, TLS, HTTP or auth failure; sleep the class backoff, try again (never give up)"},
    {"trigger": "handshake_ok", "source": S.HANDSHAKE, "dest": S.RUNNING,
     "why": "hello_ack verified; signer and verifier bound to the session; backoff reset"},
    {"trigger": "session_lost", "source": S.HANDSHAKE, "dest": S.CONNECTING,
     "why": "bad or missing hello_ack, close code or timeout during the handshake"},
    {"trigger": "session_lost", "source": S.RUNNING, "dest": S.CONNECTING,
     "why": "close code, bad inbound frame, fatal error frame or dead socket; unacked batches stay buffered"},
    {"trigger": "reconnect", "source": S.RUNNING, "dest": S.CONNECTING,
     "why": "request_reconnect(): close cleanly and open a fresh session"},
    {"trigger": "stop", "source": S.RUNNING, "dest": S.DRAINING,
     "why": "stop(): deliver what is buffered while connected, within the deadline"},
    {"trigger": "stop", "source": [S.INIT, S.CONNECTING, S.HANDSHAKE], "dest": S.STOPPED,
     "why": "stop() with no session: the buffer keeps everything for the next process"},
    {"trigger": "drained", "source": S.DRAINING, "dest": S.STOPPED,
     "why": "buffer delivered, deadline passed or connection lost; clean close sent; thread exits"},
]


def edges() -> list[tuple[str, str, str, str]]:
    """(source, dest, trigger, why) for every edge, sources expanded, in table order."""
    out = []
    for t in TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for source in sources:
            out.append((str(source), str(t["dest"]), t["trigger"], t["why"]))
    return out


def machine_transitions() -> list[dict[str, object]]:
    """The table in the shape ``transitions.Machine`` takes (without the prose)."""
    return [{k: v for k, v in t.items() if k != "why"} for t in TRANSITIONS]


def render_mermaid() -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {S.INIT.name}"]
    for source, dest, trigger, _ in edges():
        lines.append(f"    {RuntimeState(source).name} --> {RuntimeState(dest).name}: {trigger}")
    lines.append(f"    {S.STOPPED.name} --> [*]")
    return "\n".join(lines) + "\n"


def render_markdown() -> str:
    """The statecharts/runtime.md page: diagram plus one line per edge."""
    out = [
        "# Runtime state machine",
        "",
        "Generated from `z4j_bare/statechart.py` by `python -m z4j_bare statechart --markdown`;",
        "a test fails when this page and the table drift. One I/O thread owns the machine; other",
        "threads only post requests (stop, reconnect, flush).",
        "",
        "```mermaid",
        render_mermaid().rstrip("\n"),
        "```",
        "",
        "| from | to | trigger | why |",
        "|---|---|---|---|",
    ]
    for source, dest, trigger, why in edges():
        out.append(f"| {RuntimeState(source).name} | {RuntimeState(dest).name} | `{trigger}` | {why} |")
    return "\n".join(out) + "\n"
