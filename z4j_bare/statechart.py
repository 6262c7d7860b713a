"""The runtime's states, the work each one does, and the one table that says which state follows
which.

Everything else (the machine in ``lifecycle.py``, the diagram in statecharts/, ``python -m
z4j_bare statechart``) is derived from ``STATES`` and ``TRANSITIONS``. Each state's work is the
callback named in ``STATES`` on the machine's model (``lifecycle.Lifecycle``); the callback's
outcome fires the next trigger.
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

# Each state: the model's callback that does its work when the state is entered, and what it does.
STATES: dict[RuntimeState, dict[str, str | None]] = {
    S.INIT: {"callback": None, "work": "built, not started; start() launches the I/O thread, which fires `start`"},
    S.CONNECTING: {"callback": "on_enter_connecting", "work": (
        "tenacity's next attempt: first wait out the backoff the last failure's class owes (shown in "
        "health() and on the edge that led here; stop() cuts it short), then open the transport "
        "(`auto`: WebSocket, or long-poll when a proxy refused the upgrade)")},
    S.HANDSHAKE: {"callback": "on_enter_handshake", "work": (
        "hello / hello_ack on WebSocket, the identity probe on long-poll; bind the signer and verifier "
        "to the session; reset the backoff")},
    S.RUNNING: {"callback": "on_enter_running", "work": (
        "the session loop: control frames first, heartbeats, event batches, every inbound frame verified "
        "then dispatched; until stop(), a reconnect request or a failure")},
    S.DRAINING: {"callback": "on_enter_draining", "work": (
        "deliver what is buffered until the stop deadline, then close cleanly")},
    S.STOPPED: {"callback": "on_enter_stopped", "work": (
        "close whatever is still open; the machine run, and with it the I/O thread, ends")},
}

# Each edge: trigger, source, dest, and why it exists (rendered into statecharts/).
TRANSITIONS: list[dict[str, str]] = [
    {"trigger": "start", "source": S.INIT, "dest": S.CONNECTING,
     "why": "start() launched the I/O thread; make the first connect attempt"},
    {"trigger": "connected", "source": S.CONNECTING, "dest": S.HANDSHAKE,
     "why": "the transport is open (WebSocket upgraded, or long-poll's HTTP connection made)"},
    {"trigger": "connect_failed", "source": S.CONNECTING, "dest": S.CONNECTING,
     "why": "network, TLS, HTTP or auth failure; the next attempt waits the class backoff (never gives up)"},
    {"trigger": "handshake_ok", "source": S.HANDSHAKE, "dest": S.RUNNING,
     "why": "hello_ack (or the long-poll probe) accepted; signer and verifier bound to the session"},
    {"trigger": "session_lost", "source": S.HANDSHAKE, "dest": S.CONNECTING,
     "why": "bad or missing hello_ack, refused probe, close code or timeout during the handshake"},
    {"trigger": "session_lost", "source": S.RUNNING, "dest": S.CONNECTING,
     "why": "close code, HTTP failure, bad inbound frame, fatal error frame, dead socket, or a brain that "
            "stopped answering (no pong, ack or frame within the silence limit); unacked frames stay buffered"},
    {"trigger": "reconnect", "source": S.RUNNING, "dest": S.CONNECTING,
     "why": "request_reconnect(), or `auto` on long-poll trying WebSocket again: close cleanly, reconnect at once"},
    {"trigger": "stop", "source": S.RUNNING, "dest": S.DRAINING,
     "why": "stop(): deliver what is buffered while connected, within the deadline"},
    {"trigger": "stop", "source": [S.INIT, S.CONNECTING, S.HANDSHAKE], "dest": S.STOPPED,
     "why": "stop() with no session: the buffer keeps everything for the next process"},
    {"trigger": "drained", "source": S.DRAINING, "dest": S.STOPPED,
     "why": "buffer delivered, deadline passed or connection lost; clean close sent"},
]

#: Called first on entering any state: records the edge in the trace before the state's work runs.
RECORD_EDGE = "record_edge"


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


def machine_states() -> list[dict[str, object]]:
    """The states in the shape ``transitions.Machine`` takes: each runs RECORD_EDGE, then its work."""
    return [{"name": state, "on_enter": [RECORD_EDGE] + ([spec["callback"]] if spec["callback"] else [])}
            for state, spec in STATES.items()]


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
        "threads only post requests (stop, reconnect). Each state's work is the callback named below",
        "on the machine's model (`z4j_bare/lifecycle.py`); its outcome fires the next trigger, queued,",
        "so it runs after the callback returns. The I/O thread only starts the machine and returns",
        "when it reaches STOPPED.",
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
    out += ["", "| state | callback | work | fires |", "|---|---|---|---|"]
    for state, spec in STATES.items():
        fires = sorted({t for s, _, t, _ in edges() if s == state})
        callback = f"`{spec['callback']}`" if spec["callback"] else "(none)"
        out.append(f"| {state.name} | {callback} | {spec['work']} | {', '.join(f'`{t}`' for t in fires) or '-'} |")
    return "\n".join(out) + "\n"
