"""``doctor``: prove, stage by stage, that this host can reach its brain and be trusted by it.

    from z4j_bare.diagnostics import run_doctor

    report = run_doctor({"brain_url": "https://z4j.example.com"})   # other values from Z4J_*
    report.ok            # True when nothing failed
    report.probes        # ProbeResult per stage, in order
    report.trace         # the state-machine edges a real AgentRuntime went through
    print(report.to_json())

Stages, in order (a failed stage skips the ones that need it): ``config`` (every value and
where it came from, secrets masked), ``buffer_dir`` (can the agent keep events on disk here),
``dns``, ``tcp``, ``tls`` (https/wss only: version, certificate subject and expiry),
``websocket`` (the upgrade with the bearer token), ``hello`` (an authenticated hello answered
by hello_ack), ``hmac`` (a signed, empty ``event_batch`` answered by a signed
``event_batch_ack`` that verifies with our secret: the brain and this agent hold the same key),
``longpoll``, ``skew`` (this host's clock against the brain's, from hello_ack's ts or a Date
header: warns above 5 s, fails above the brain's 60 s window and names the fix, NTP),
``runtime`` (a real ``AgentRuntime`` with a no-op engine and a throw-away buffer connects,
reaches RUNNING and stops cleanly; its trace is the report's ``trace``).

The reference doctor reports success with a wrong token or a wrong HMAC secret; this one
fails ``hello`` (close 4401) or ``hmac`` (close 4403, or a reply that does not verify).

Side effects on the brain: the doctor's hello is a real agent hello, so the brain marks the
agent online and records the doctor's engine list (``doctor``, no capabilities) until the real
worker's next hello, so run it before the worker starts or restart the worker after it; a pending command the brain pushes to the doctor's session is answered ``failed``
("not executed"), never silently swallowed. docs/troubleshooting.md explains both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .config import OPTIONS_BY_NAME, Config, ConfigError
from .engines.base import EngineAdapter
from .logs import get_logger
from .protocol import (
    PROTOCOL_VERSION_TEXT,
    BackoffClass,
    CloseCode,
    FrameType,
    ProtocolError,
    ReplayError,
    SessionBinding,
    SignatureError,
    Signer,
    Verifier,
    describe_close,
    encode_unsigned,
    new_frame_id,
)
from .storage.location import check_private_dir, z4j_home
from .transport import Connection, LongPollTransport, Outgoing, TlsSettings, TransportError, read_hello_ack
from .transport.clock import BRAIN_WINDOW_SECONDS, WARN_SKEW_SECONDS, BrainClock, skew_text

__all__ = ["PROBE_NAMES", "SCHEMA", "DoctorEngine", "DoctorReport", "ProbeResult", "buffer_status", "run_doctor"]

log = get_logger(__name__)

#: Bumped only on an incompatible change of ``DoctorReport.to_dict()``; additions keep it.
SCHEMA = "z4j-bare.doctor/1"
PROBE_NAMES = ("config", "buffer_dir", "dns", "tcp", "tls", "websocket", "hello", "hmac", "longpoll", "skew",
               "runtime")
WS_STAGES = ("websocket", "hello", "hmac")
PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
CERT_EXPIRY_WARN_DAYS = 14
#: How long the runtime stage may keep one connection attempt going before judging it.
RUNTIME_HOLD_SECONDS = 0.5

_HMAC_MISMATCH = "HMAC secret does not match this agent's token"
_HMAC_FIX = ("set Z4J_HMAC_SECRET to the hmac_secret the brain showed together with this token: "
             "token and secret are minted as a pair per agent (a secret of another agent or project, "
             "or one from before the brain's master secret was rotated, does not match); if it is lost, "
             "rotate the agent's credentials in the brain and update both values")


@dataclass
class ProbeResult:
    """One stage. ``status`` is ``pass``, ``warn`` (works, but look), ``fail`` or ``skip``."""

    name: str
    status: str
    message: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != FAIL

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "ok": self.ok, "message": self.message,
                "fix": self.fix, "details": self.details, "elapsed_ms": self.elapsed_ms}


@dataclass
class DoctorReport:
    probes: list[ProbeResult]
    trace: list[dict[str, Any]] = field(default_factory=list)
    brain_url: str | None = None
    ws_url: str | None = None

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.probes)

    @property
    def failures(self) -> list[ProbeResult]:
        return [p for p in self.probes if p.status == FAIL]

    def probe(self, name: str) -> ProbeResult:
        for p in self.probes:
            if p.name == name:
                return p
        raise KeyError(f"no probe named {name!r}; probes are {', '.join(PROBE_NAMES)}")

    def to_dict(self) -> dict[str, Any]:
        """The documented, stable JSON shape (docs/troubleshooting.md, "JSON output")."""
        return {
            "schema": SCHEMA,
            "ok": self.ok,
            "agent_version": __version__,
            "protocol_version": PROTOCOL_VERSION_TEXT,
            "brain_url": self.brain_url,
            "ws_url": self.ws_url,
            "probes": [p.to_dict() for p in self.probes],
            "trace": list(self.trace),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, default=str)

    def render_text(self) -> str:
        lines = [render_header(self.brain_url)]
        for p in self.probes:
            lines.extend(render_probe(p))
        return "\n".join(lines) + "\n" + self.render_footer()

    def render_footer(self) -> str:
        """What follows the stages: the runtime's state trace and the verdict."""
        lines = []
        if self.trace:
            lines.append("state trace (a real AgentRuntime, elapsed = time spent in the source state):")
            for edge in self.trace:
                lines.append(f"  {edge['source'].upper():>10} -> {edge['dest'].upper():<10} "
                             f"{edge['trigger']:<15} {edge['elapsed_ms']:>9.1f} ms  {edge['at']}{_edge_note(edge)}")
        failures = self.failures
        if failures:
            lines.append(f"{len(failures)} problem(s): " + ", ".join(p.name for p in failures)
                         + ". Fix the first one first: later stages depend on it.")
        else:
            lines.append("all green")
        return "\n".join(lines) + "\n"


def render_header(brain_url: str | None = None) -> str:
    return f"z4j-bare doctor {__version__} (protocol {PROTOCOL_VERSION_TEXT})" + (f": {brain_url}" if brain_url else "")


def render_probe(p: ProbeResult) -> list[str]:
    """One stage as text lines: status, name and message, then its details and its fix."""
    lines = [f"  {p.status.upper():<4}  {p.name:<10} {p.message}"]
    lines.extend(f"{'':18}{extra}" for extra in p.details.get("lines", []))
    if p.fix and p.status in (FAIL, WARN):
        lines.append(f"{'':18}fix: {p.fix}")
    return lines


class _Stages(list):  # type: ignore[type-arg]
    """The report's stages; each one is also handed to ``on_probe`` the moment it is added."""

    def __init__(self, on_probe: Callable[[ProbeResult], None]) -> None:
        super().__init__()
        self._on_probe = on_probe

    def append(self, probe: ProbeResult) -> None:
        super().append(probe)
        self._on_probe(probe)

    def extend(self, probes: Iterable[ProbeResult]) -> None:
        for probe in probes:
            self.append(probe)


def _edge_note(edge: dict[str, Any]) -> str:
    """What an edge of the trace adds: the transport it connected over, why it failed, the wait."""
    notes = []
    if edge.get("transport"):
        notes.append(f"over {edge['transport']}" + (f" (fell back: {edge['fallback']})" if edge.get("fallback") else ""))
    if edge.get("reason"):
        notes.append(f"{edge.get('failure_class', '?')}: {edge['reason']}")
    if "retry_in_s" in edge:
        notes.append(f"next attempt in {edge['retry_in_s']:g} s")
    return ("  " + "; ".join(notes)) if notes else ""


class DoctorEngine(EngineAdapter):
    """No hooks, no actions: lets a real runtime connect without touching any queue."""

    name = "doctor"


class _Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def ms(self) -> float:
        return round((time.perf_counter() - self.start) * 1000, 2)


# ------------------------------------------------------------------------------------------ config


def _resolve(config_or_options: Config | Mapping[str, Any] | None, env: Mapping[str, str] | None,
             kwarg_label: str) -> tuple[Config | None, ProbeResult, str | None]:
    """The config probe, plus the brain URL to keep probing the network with if config failed."""
    t = _Timer()
    if isinstance(config_or_options, Config):
        config = config_or_options
    else:
        options = {k: v for k, v in dict(config_or_options or {}).items() if v is not None}
        try:
            config = Config.resolve(env=env, **options)
        except (ConfigError, TypeError) as exc:
            problems = list(getattr(exc, "problems", None) or [str(exc)])
            if kwarg_label == "flag":
                problems = [re.sub(r"pass (\w+)=", lambda m: "pass --" + m.group(1).replace("_", "-"), p)
                            for p in problems]
            message = "; ".join(p.split(" Fix: ")[0].rstrip(".") for p in problems)
            fixes = [p.split(" Fix: ", 1)[1].rstrip(".") for p in problems if " Fix: " in p]
            raw_url = options.get("brain_url") or (os.environ if env is None else env).get("Z4J_BRAIN_URL", "")
            return None, ProbeResult("config", FAIL, message, "; ".join(fixes) or None,
                                     {"problems": problems}, t.ms()), (str(raw_url).strip() or None)
    rows = config.describe()
    labels = {"kwarg": kwarg_label, "env": "env", "default": "default"}
    shown = [r for r in rows if r["source"] != "default" or OPTIONS_BY_NAME[r["name"]].required]
    lines = []
    for r in shown:
        where = f"env {r['env']}" if r["source"] == "env" else labels[r["source"]]
        lines.append(f"{r['name']} = {r['value']}  ({where})")
    details = {"options": rows, "ws_url": config.ws_url, "loopback": config.is_loopback, "lines": lines}
    status, fix = PASS, None
    message = f"{len(shown)} value(s) set, the rest default; brain {config.ws_url}"
    if config.dev_mode:
        status, fix = WARN, "dev_mode=True allows plain http/ws and unverified TLS: lab use only"
    return config, ProbeResult("config", status, message, fix, details, t.ms()), config.brain_url


# ------------------------------------------------------------------------------------------ local


def _buffer_dir(config: Config | None) -> ProbeResult:
    t = _Timer()
    if config is not None and config.buffer_path is not None:
        where, origin = Path(config.buffer_path).expanduser().parent, "buffer_path"
    elif config is not None and config.home is not None:
        where, origin = Path(config.home), "Z4J_HOME"
    else:
        where, origin = z4j_home(), ("Z4J_HOME" if os.environ.get("Z4J_HOME", "").strip() else "default ~/.z4j")
    details: dict[str, Any] = {"path": str(where), "origin": origin, "uid": os.geteuid()}
    existed = where.exists()
    reason = _try_buffer_dir(where)
    if reason is not None:
        return _buffer_fallback(where, reason, details, t)
    usage = shutil.disk_usage(where if where.exists() else next(p for p in where.parents if p.exists()))
    details["free_bytes"] = usage.free
    how = "private and writable" if existed else "creatable by the agent (mode 0700)"
    message = (f"{where} is {how}: a test file was created, written, fsynced and removed "
               f"({usage.free // 2**20} MiB free; from {origin})")
    if usage.free < 64 * 2**20:
        return ProbeResult("buffer_dir", WARN, message, "free some disk space: the buffer may need up to "
                           "buffer_max_bytes (256 MiB by default)", details, t.ms())
    return ProbeResult("buffer_dir", PASS, message, None, details, t.ms())


def _try_buffer_dir(directory: Path) -> str | None:
    """Do what the buffer does first, for real: make the directory if needed (mode 0700), check it
    is private, then create, write, fsync and remove a file in it. Why not, or None. What the
    probe created is removed again (``os.access`` is no test: root passes it everywhere)."""
    created: list[Path] = []
    try:
        for missing in reversed([d for d in (directory, *directory.parents) if not d.exists()]):
            missing.mkdir(mode=0o700)
            created.append(missing)
        reason = check_private_dir(directory, create=False)
        if reason is not None:
            return reason
        probe = directory / f".doctor-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"z4j")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
        return None
    except OSError as exc:
        return f"cannot {'create' if not directory.exists() else 'write in'} {directory}: {exc.strerror or exc}"
    finally:
        for made in reversed(created):
            try:
                made.rmdir()
            except OSError:
                pass


def _buffer_fallback(where: Path, reason: str, details: dict[str, Any], t: _Timer) -> ProbeResult:
    """The configured directory is unusable: say where the runtime would put the buffer instead."""
    from .storage.location import fallback_root  # the runtime's own choice of fallback

    fallback = fallback_root()
    why_not = "no private directory can be made under $TMPDIR" if fallback is None else _try_buffer_dir(fallback)
    details["fallback"] = None if fallback is None else str(fallback)
    details["reason"] = reason
    if why_not is None:
        then = (f"the agent would move its buffer to {fallback} (checked: writable), which is wiped on reboot "
                "when /tmp is a tmpfs: events buffered during an outage would be lost")
    else:
        details["fallback_reason"] = why_not
        then = f"and the fallback is unusable too ({why_not}): the agent would not start"
    fix = ("give the agent a persistent directory it owns, e.g. `install -d -m 0700 -o <service-user> "
           "/var/lib/z4j` and set Z4J_HOME=/var/lib/z4j (systemd: StateDirectory=z4j plus "
           "Environment=Z4J_HOME=%S/z4j)")
    return ProbeResult("buffer_dir", FAIL, f"the buffer directory is unusable: {reason} (typical for service users "
                       f"such as www-data or nobody, whose HOME is not writable, and for systemd DynamicUser); "
                       f"{then}", fix + "; otherwise the agent falls back to $TMPDIR/z4j-<uid> (wiped on reboot "
                       "when /tmp is a tmpfs)", details, t.ms())


# ------------------------------------------------------------------------------------------ network


def _endpoint(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    secure = scheme in ("https", "wss")
    return scheme, parts.hostname or "", parts.port or (443 if secure else 80)


def _dns(host: str, port: int) -> tuple[ProbeResult, list[str]]:
    t = _Timer()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return ProbeResult("dns", FAIL, f"cannot resolve {host!r}: {reason}",
                           "check the host name in brain_url / Z4J_BRAIN_URL (typo? internal name that only "
                           "resolves inside the cluster or VPN?), then /etc/resolv.conf and /etc/hosts",
                           {"host": host}, t.ms()), []
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return ProbeResult("dns", PASS, f"{host} -> {', '.join(addresses[:4])}", None,
                       {"host": host, "addresses": addresses}, t.ms()), addresses


def _tcp(host: str, port: int, timeout: float) -> ProbeResult:
    t = _Timer()
    details = {"host": host, "port": port}
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            details["peer"] = str(sock.getpeername()[0])
    except ConnectionRefusedError:
        return ProbeResult("tcp", FAIL, f"port closed: nothing accepts connections on {host}:{port}",
                           "start the brain (or check its --port), and that brain_url names the right host "
                           "and port; behind a proxy, point brain_url at the proxy", details, t.ms())
    except TimeoutError:
        return ProbeResult("tcp", FAIL, f"no answer from {host}:{port} within {timeout:g} s",
                           "a firewall or security group is dropping packets: allow outbound TCP from this "
                           "host to the brain's port", details, t.ms())
    except OSError as exc:
        return ProbeResult("tcp", FAIL, f"cannot connect to {host}:{port}: {exc.strerror or exc}",
                           "check routing and firewalls between this host and the brain", details, t.ms())
    return ProbeResult("tcp", PASS, f"connected to {host}:{port} in {t.ms():.1f} ms", None, details, t.ms())


def _tls(config: Config, host: str, port: int, timeout: float) -> ProbeResult:
    t = _Timer()
    tls = TlsSettings(config.tls_verify, str(config.ca_bundle) if config.ca_bundle else None)
    details: dict[str, Any] = {"verify": config.tls_verify, "ca_bundle": str(config.ca_bundle) if config.ca_bundle else None}
    try:
        ctx = tls.context()
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as sock:
            details["version"] = sock.version()
            cert = sock.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        why = exc.verify_message or exc.reason or str(exc)
        if "expired" in why:
            fix = "the brain's certificate has expired: renew it on the brain (or its proxy)"
        elif "hostname" in why.lower() or "match" in why.lower():
            fix = f"the certificate does not cover {host!r}: use the host name on the certificate in brain_url"
        else:
            fix = ("the certificate is not trusted here: add the issuing CA to the system trust store, or set "
                   "Z4J_CA_BUNDLE=/path/to/ca.pem (a private CA)")
        return ProbeResult("tls", FAIL, f"certificate rejected: {why}", fix, details, t.ms())
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        return ProbeResult("tls", FAIL, f"TLS handshake with {host}:{port} failed: {reason}",
                           "check that this port serves TLS (an http port behind an https:// URL fails like "
                           "this) and that the brain or proxy allows TLS 1.2+", details, t.ms())
    if not cert:
        return ProbeResult("tls", WARN, f"{details['version']} without certificate verification",
                           "tls_verify=False is for labs only", details, t.ms())
    subject = {k: v for rdn in cert.get("subject", ()) for k, v in rdn}
    issuer = {k: v for rdn in cert.get("issuer", ()) for k, v in rdn}
    expires = ssl.cert_time_to_seconds(cert["notAfter"]) if cert.get("notAfter") else None
    days = None if expires is None else round((expires - time.time()) / 86400, 1)
    details.update(subject=subject.get("commonName"), issuer=issuer.get("commonName") or issuer.get("organizationName"),
                   not_after=cert.get("notAfter"), days_left=days)
    message = (f"{details['version']}, certificate CN={details['subject']} issued by {details['issuer']}, "
               f"expires {cert.get('notAfter')} ({days} days)")
    if days is not None and days < CERT_EXPIRY_WARN_DAYS:
        return ProbeResult("tls", WARN, message, "renew the brain's certificate soon", details, t.ms())
    return ProbeResult("tls", PASS, message, None, details, t.ms())


# ------------------------------------------------------------------------------------------ session


def _close_problem(code: int | None, *, after_signed: bool) -> tuple[str, str]:
    """What a close code from the brain means for the user, and what to do."""
    if code == CloseCode.UNAUTHORIZED:
        return (("the brain refused the token (close 4401: unknown, malformed or revoked token, or the "
                "agent's project is archived)"),
                ("set Z4J_TOKEN to the token shown when this agent was created in the brain (it is shown once; "
                "rotate it there if lost); check it belongs to this brain and the agent is not revoked"))
    if code == CloseCode.FORBIDDEN and after_signed:
        return (f"{_HMAC_MISMATCH} (the brain closed 4403 on our signed frame)", _HMAC_FIX)
    if code == CloseCode.FORBIDDEN:
        return ("the brain refused this host's address (close 4403 before authentication)",
                ("add this host's source address to the brain's Z4J_AGENT_IP_ALLOWLIST (or fix the "
                "trusted-proxy settings so the brain sees the real client address)"))
    if code == CloseCode.REVOKED:
        return ("the agent was revoked or its project archived (close 4003)",
                "create a new agent in the brain and use its token and hmac secret")
    if code in (CloseCode.UPGRADE_REQUIRED, CloseCode.VERSION_SKEW):
        return (f"the brain does not speak this agent's protocol (close {code})",
                "upgrade the brain or install a z4j-bare release that matches it")
    if code == CloseCode.RATE_LIMITED:
        return ("the brain is rate limiting this agent (close 4429: connect rate or per-agent worker cap)",
                "wait a minute and retry; use one agent token per worker group")
    if code == CloseCode.BAD_FRAME:
        return ("the brain rejected a frame as malformed (close 4400)",
                "the brain and agent disagree on the wire format: check versions (python -m z4j_bare version)")
    return (f"the brain closed the connection: {describe_close(code)}",
            "check the brain's logs for this agent around this time")


def _reply_problem(exc: ProtocolError) -> tuple[str, str]:
    if isinstance(exc, ReplayError) and "local clock" in str(exc):
        return (f"the brain's signed reply is outside the clock window: {exc}",
                "synchronise the clocks of this host and the brain (NTP); signed frames allow 60 s of skew")
    if isinstance(exc, SignatureError):
        return (f"{_HMAC_MISMATCH} (the brain's signed reply failed verification: {exc})", _HMAC_FIX)
    return (f"the brain's reply could not be verified: {exc}", "check versions (python -m z4j_bare version)")


def _recv(conn: Connection, deadline: float) -> bytes | None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        data = conn.recv(min(remaining, 0.25))
        if data is not None:
            return data


def _doctor_hello() -> dict[str, Any]:
    from .runtime import COMPAT_AGENT_VERSION

    now = time.time()
    return {
        "protocol_version": PROTOCOL_VERSION_TEXT, "agent_version": COMPAT_AGENT_VERSION, "framework": "bare",
        "engines": [DoctorEngine.name], "schedulers": [], "capabilities": {DoctorEngine.name: []},
        # Empty host: the brain then keeps the display name the real worker sent.
        "host": {},
        # A worker slot of its own: never displaces (4002) the real worker's session.
        "worker_id": f"doctor-{os.getpid()}-{int(now * 1000)}", "worker_role": "other",
        "worker_pid": os.getpid(), "runtime_features": [],
    }


def _upgrade_fix(text: str) -> str:
    """What to do about a refused WebSocket upgrade, from the transport's message."""
    if "HTTP 401" in text or "HTTP 403" in text:
        return ("a proxy in front of the brain refused the upgrade: check the token (Z4J_TOKEN) and that the "
                "proxy forwards the Authorization header to the brain")
    if "HTTP 404" in text:
        return ("no z4j brain WebSocket endpoint at this URL: set brain_url to the brain's base URL (keep a "
                "path prefix if the brain is served under one; /ws/agent is appended)")
    if "HTTP" in text:
        return ("the server answered HTTP instead of upgrading: a proxy must pass WebSocket upgrades "
                "(Upgrade/Connection headers) to the brain")
    return "see the tcp and tls stages; a proxy may be cutting WebSocket connections"


def _read_ack(conn: Connection, config: Config, t: _Timer) -> Any:
    """The brain's hello_ack, or the failed ``hello`` stage saying why there is none."""
    try:
        data = _recv(conn, time.monotonic() + config.handshake_timeout)
        if data is None:
            return ProbeResult(
                "hello", FAIL, f"no hello_ack within {config.handshake_timeout:g} s",
                "the server accepted the upgrade but is not answering like a z4j brain: check that brain_url "
                "points at the brain and that no proxy buffers WebSocket traffic", {}, t.ms())
        return read_hello_ack(data, default_heartbeat=config.heartbeat_seconds)
    except TransportError as exc:
        if exc.backoff is BackoffClass.INCOMPATIBLE:
            return ProbeResult("hello", FAIL, f"hello_ack is incompatible: {exc}",
                               "use a brain that speaks z4j protocol 2", {}, t.ms())
        message, fix = _close_problem(exc.close_code, after_signed=False)
        return ProbeResult("hello", FAIL, message, fix, {"close_code": exc.close_code}, t.ms())
    except ProtocolError as exc:
        return ProbeResult("hello", FAIL, f"the brain's first reply is not a valid hello_ack: {exc}",
                           "check versions (python -m z4j_bare version) and that brain_url is the brain", {}, t.ms())


def _session(config: Config, timeout: float) -> list[ProbeResult]:
    """websocket, hello, hmac on one connection (stops at the first failure, skipping the rest)."""
    results: list[ProbeResult] = []

    def skip_rest(after: str) -> list[ProbeResult]:
        for name in ("websocket", "hello", "hmac")[len(results):]:
            results.append(ProbeResult(name, SKIP, f"skipped: {after} failed"))
        return results

    t = _Timer()
    tls = TlsSettings(config.tls_verify, str(config.ca_bundle) if config.ca_bundle else None)
    conn = Connection(config.ws_url, config.token.reveal(), timeout=timeout, tls=tls)
    try:
        conn.open()
    except TransportError as exc:
        results.append(ProbeResult("websocket", FAIL, f"WebSocket upgrade to {config.ws_url} failed: {exc}",
                                   _upgrade_fix(str(exc)),
                                   {"ws_url": config.ws_url, "upgrade_refused": exc.upgrade_refused}, t.ms()))
        return skip_rest("websocket")
    try:
        results.append(ProbeResult("websocket", PASS, f"upgrade to {config.ws_url} accepted", None,
                                   {"ws_url": config.ws_url}, t.ms()))
        t = _Timer()
        sent_at = time.time()
        try:
            conn.send(encode_unsigned(FrameType.HELLO, new_frame_id("hello_", 16), _doctor_hello()))
        except TransportError:
            pass  # the brain may already have closed (bad token): the close code is read below
        ack = _read_ack(conn, config, t)
        if isinstance(ack, ProbeResult):
            results.append(ack)
            return skip_rest("hello")
        binding = ack.binding
        clock = _measured_clock(ack.brain_time, sent_at, conn.date_offset)
        hello_details = {"agent_id": binding.agent_id, "project_id": binding.project_id,
                         "session_id": binding.session_id, "brain_version": ack.brain_version,
                         "heartbeat_interval_seconds": ack.heartbeat_interval, "max_frame_size_bytes": ack.max_frame,
                         "clock_skew_seconds": clock.snapshot()["skew_seconds"], "clock_skew_source": clock.source}
        results.append(ProbeResult("hello", PASS, f"token accepted: hello_ack from brain {ack.brain_version}, "
                                   f"agent {binding.agent_id}, session {binding.session_id}", None,
                                   hello_details, t.ms()))
        results.append(_hmac_round_trip(conn, config, binding, clock))
        return results
    finally:
        conn.close(1000)


def _measured_clock(brain_time: float | None, sent_at: float, date_skew: float | None) -> BrainClock:
    """The brain's clock as the runtime would measure it at this connect (hello_ack's ts first)."""
    clock = BrainClock(warn=False)
    if brain_time is not None:
        clock.measured(brain_time - (sent_at + time.time()) / 2, "hello_ack")
    elif date_skew is not None:
        clock.measured(date_skew, "date")
    return clock


def _hmac_round_trip(conn: Connection, config: Config, binding: SessionBinding, clock: BrainClock) -> ProbeResult:
    t = _Timer()
    # Signed and checked on the brain's clock, as the runtime does: a skewed host still proves its key
    # here, and the skew stage reports the skew.
    signer, verifier = Signer(config.key, binding, clock.now_text), Verifier(config.key, binding, clock.now)
    batch_id = new_frame_id("ev_")
    details: dict[str, Any] = {"frame_id": batch_id}
    deadline = time.monotonic() + config.handshake_timeout
    try:
        # An empty batch stores nothing, yet the brain must verify it and answer with a signed ack.
        conn.send(signer.sign_event_batch(batch_id, []))
        while True:
            data = _recv(conn, deadline)
            if data is None:
                return ProbeResult("hmac", FAIL, f"no event_batch_ack for a signed frame within "
                                   f"{config.handshake_timeout:g} s (the brain neither accepted nor refused it)",
                                   "check the brain's logs; a brain with a failing database withholds acks",
                                   details, t.ms())
            frame = verifier.verify(data)
            if frame.type is FrameType.EVENT_BATCH_ACK and frame.payload.get("acked_id") == batch_id:
                details["reply"] = {"type": frame.type.value, "id": frame.id, "seq": frame.seq}
                return ProbeResult("hmac", PASS, "signed event_batch accepted, and the brain's signed "
                                   "event_batch_ack verified with our secret: both sides hold the same key",
                                   None, details, t.ms())
            if frame.type is FrameType.COMMAND:
                _refuse_command(conn, signer, frame)
                details.setdefault("commands_refused", []).append(frame.id)
    except TransportError as exc:
        message, fix = _close_problem(exc.close_code, after_signed=True)
        return ProbeResult("hmac", FAIL, message, fix, {**details, "close_code": exc.close_code}, t.ms())
    except ProtocolError as exc:
        message, fix = _reply_problem(exc)
        return ProbeResult("hmac", FAIL, message, fix, details, t.ms())


def _refuse_command(conn: Connection, signer: Signer, frame: Any) -> None:
    """A pending command the brain pushed to the doctor's session: answer it, never drop it."""
    claim = frame.payload.get("delivery_claim_token")
    try:
        conn.send(signer.sign(FrameType.COMMAND_RESULT, frame.id, {
            "status": "failed", "result": None, "delivery_claim_token": claim,
            "error": "delivered to a `z4j-bare doctor` session, which executes nothing; issue the command again",
        }))
    except TransportError:
        pass
    log.warning("doctor.command_refused", command_id=frame.id, action=frame.payload.get("action"))


# ------------------------------------------------------------------------------------------ long-poll


def _longpoll(config: Config, timeout: float) -> ProbeResult:
    """The long-poll API: the identity probe, then a signed empty event_batch the brain must
    accept. A wrong HMAC secret gets 409 there (the brain invalidates the session)."""
    t = _Timer()
    tls = TlsSettings(config.tls_verify, str(config.ca_bundle) if config.ca_bundle else None)
    transport = LongPollTransport(config.brain_url, config.token.reveal(), config.key, agent_id=config.agent_id,
                                  timeout=timeout, tls=tls)
    transport.clock = BrainClock(warn=False)
    details: dict[str, Any] = {"url": transport.url}
    try:
        transport.open()
        info = transport.establish(_doctor_hello(), timeout)
        details.update(agent_id=info.binding.agent_id, project_id=info.binding.project_id,
                       clock_skew_seconds=transport.clock.snapshot()["skew_seconds"], clock_skew_source=info.clock_source)
        answer = transport.upload_now([Outgoing(FrameType.EVENT_BATCH.value, new_frame_id("ev_"), events=[])], timeout)
    except TransportError as exc:
        message, fix = _longpoll_problem(str(exc))
        return ProbeResult("longpoll", FAIL, message, fix, details, t.ms())
    finally:
        transport.close()
    reply = answer.json()
    details["upload_status"] = answer.status
    if answer.status == 200 and isinstance(reply, dict) and reply.get("accepted") == 1:
        return ProbeResult("longpoll", PASS, f"long-poll works at {transport.url}: the probe named agent "
                           f"{details['agent_id']}, and a signed upload was accepted (the brain holds the same key)",
                           None, details, t.ms())
    if answer.status == 409:
        return ProbeResult("longpoll", FAIL, f"{_HMAC_MISMATCH} (the brain refused our signed upload: HTTP 409)",
                           _HMAC_FIX, details, t.ms())
    message, fix = _longpoll_problem(f"upload answered HTTP {answer.status}: {answer.body[:200]!r}")
    return ProbeResult("longpoll", FAIL, message, fix, details, t.ms())


def _longpoll_problem(text: str) -> tuple[str, str]:
    if "HTTP 401" in text:
        return (f"the brain refused the token on long-poll ({text})",
                "set Z4J_TOKEN to the token shown when this agent was created in the brain")
    if "HTTP 403" in text:
        return (f"the brain refused this agent on long-poll ({text})",
                "check the brain's Z4J_AGENT_IP_ALLOWLIST and that the agent's project is not archived")
    if "HTTP 404" in text:
        return (f"no z4j long-poll API at this URL ({text})",
                "set brain_url to the brain's base URL (keep a path prefix if the brain is served under one)")
    return (f"long-poll failed: {text}", "see the tcp and tls stages; a proxy may block /api/v1/agent/*")


def _weigh_transports(mode: str, ws: list[ProbeResult], lp: ProbeResult) -> None:
    """A failure of a transport this configuration does not need is a warning, not a failure; the
    long-poll stage says which transports work and which one the agent will use."""
    ws_ok = all(p.status == PASS for p in ws)
    refused = bool(ws and ws[0].details.get("upgrade_refused"))
    lp_ok = lp.status == PASS
    if mode == "ws" or (mode == "auto" and ws_ok):
        unused = [lp]
    elif mode == "longpoll" or (mode == "auto" and refused and lp_ok):
        unused = ws
    else:
        unused = []
    for p in unused:
        if p.status == FAIL:
            p.status = WARN
            p.message = f"(not needed with transport={mode}) {p.message}"
    if mode == "auto":
        uses = "WebSocket" if ws_ok else ("long-poll (a proxy refuses the upgrade)" if refused and lp_ok else "nothing")
    else:
        uses = {"ws": "WebSocket", "longpoll": "long-poll"}[mode] if (ws_ok if mode == "ws" else lp_ok) else "nothing"
    lp.details["transports"] = {"ws": ws_ok, "longpoll": lp_ok, "mode": mode, "uses": uses}
    lp.details.setdefault("lines", []).append(
        f"WebSocket {'works' if ws_ok else 'fails'}, long-poll {'works' if lp_ok else 'fails'}; "
        f"transport={mode} uses {uses}")


# ------------------------------------------------------------------------------------------ skew


def _skew(probes: list[ProbeResult]) -> ProbeResult:
    """How far this host's clock is from the brain's, as measured by the hello (or long-poll) stage."""
    t = _Timer()
    measured = [(p.details["clock_skew_seconds"], p.details.get("clock_skew_source") or "date", p.name)
                for p in probes if p.details.get("clock_skew_seconds") is not None]
    if not measured:
        return ProbeResult("skew", SKIP, "skipped: no stage got the brain's time (hello_ack or a Date header)")
    # hello_ack's ts (the brain's own clock, to the microsecond) before a Date header (whole seconds).
    skew, source, stage = min(measured, key=lambda m: m[1] != "hello_ack")
    details = {"skew_seconds": skew, "source": source, "stage": stage, "warn_above_seconds": WARN_SKEW_SECONDS,
               "fail_above_seconds": BRAIN_WINDOW_SECONDS}
    text = f"{skew_text(skew)} (from the brain's {source})"
    fix = ("synchronise this host's clock with NTP (chrony or systemd-timesyncd; in a container, fix the host's "
           "clock; after restoring a VM snapshot, resync): the agent signs with the brain's time so it still "
           "delivers, but the times of task events the brain shows come from this clock")
    if abs(skew) > BRAIN_WINDOW_SECONDS:
        return ProbeResult("skew", FAIL, f"{text}: beyond the brain's {BRAIN_WINDOW_SECONDS:.0f} s window", fix,
                           details, t.ms())
    if abs(skew) > WARN_SKEW_SECONDS:
        return ProbeResult("skew", WARN, text, fix, details, t.ms())
    return ProbeResult("skew", PASS, f"{text}: within {WARN_SKEW_SECONDS:g} s", None, details, t.ms())


# ------------------------------------------------------------------------------------------ runtime


def _runtime(config: Config, wait: float) -> tuple[ProbeResult, list[dict[str, Any]]]:
    from .agent import build_runtime
    from .statechart import RuntimeState

    t = _Timer()
    scratch = Path(tempfile.mkdtemp(prefix="z4j-doctor-"))
    runtime = None
    try:
        cfg = dataclasses.replace(config, home=scratch, buffer_path=None, autostart=False,
                                  stop_timeout=min(config.stop_timeout, 3.0))
        runtime = build_runtime(cfg, [DoctorEngine()])
        runtime.start()
        deadline = time.monotonic() + wait
        reached = False
        while time.monotonic() < deadline:
            if runtime.state is RuntimeState.RUNNING and not reached:
                reached = True
                deadline = min(deadline, time.monotonic() + RUNTIME_HOLD_SECONDS)
            if any(e["trigger"] in ("connect_failed", "session_lost") for e in runtime.trace):
                break
            time.sleep(0.01)
        health = runtime.health()
        runtime.stop(3.0)
        trace = runtime.trace
    except Exception as exc:  # noqa: BLE001 - a doctor reports, it does not crash
        if runtime is not None:
            runtime.stop(1.0)
        return ProbeResult("runtime", FAIL, f"the agent runtime could not run: {type(exc).__name__}: {exc}",
                           "see the stages above; report this with the doctor's --json output if they are green",
                           {}, t.ms()), (runtime.trace if runtime is not None else [])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    path = " -> ".join([trace[0]["source"].upper()] + [e["dest"].upper() for e in trace]) if trace else "(none)"
    details = {"path": path, "last_failure": health.get("last_failure"), "transport": health.get("transport"),
               "transport_fallback": health.get("transport_fallback"), "backoff": health.get("backoff")}
    lost = [e for e in trace if e["trigger"] in ("connect_failed", "session_lost")]
    clean = bool(trace) and trace[-1]["dest"] == "stopped"
    if reached and not lost and clean:
        to_running = sum(e["elapsed_ms"] for e in trace[: [e["dest"] for e in trace].index("running") + 1])
        return ProbeResult("runtime", PASS, f"a real AgentRuntime reached RUNNING over {health.get('transport')} in "
                           f"{to_running:.0f} ms and stopped cleanly: {path}", None, details, t.ms()), trace
    why = health.get("last_failure") or ("no session within the wait" if not reached else "did not stop cleanly")
    waiting = health.get("backoff")
    if waiting:
        why += (f"; next attempt at {waiting['next_attempt_at']} ({waiting['failure_class']} backoff, "
                f"{waiting['retry_in_s']:g} s)")
    return ProbeResult("runtime", FAIL, f"the agent runtime did not hold a session: {why} ({path})",
                       "fix the first failing stage above; the runtime keeps retrying with backoff in production",
                       details, t.ms()), trace


# ------------------------------------------------------------------------------------------ entry


def run_doctor(
    config_or_options: Config | Mapping[str, Any] | None = None,
    *,
    websocket: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    kwarg_label: str = "argument",
    on_probe: Callable[[ProbeResult], None] | None = None,
) -> DoctorReport:
    """Run every probe in order and return the report (never raises for a failed probe).

    ``config_or_options``: a resolved ``Config``, or option keywords for ``Config.resolve``
    (``None`` values are ignored so CLI flags can be passed straight through); the rest comes
    from ``env`` (default ``os.environ``). ``websocket=False`` stops after TLS. ``timeout``
    bounds each network step (default: the config's ``connect_timeout``, at most 10 s).
    ``kwarg_label`` names where explicit options came from in the text output ("flag" for the CLI).
    ``on_probe`` is called with each stage as soon as it is known (the CLI prints it at once).
    """
    probes: list[ProbeResult] = _Stages(on_probe) if on_probe is not None else []
    config, cfg_probe, url = _resolve(config_or_options, env, kwarg_label)
    probes.append(cfg_probe)
    probes.append(_buffer_dir(config))
    report = DoctorReport(probes=probes, brain_url=config.brain_url if config else None,
                          ws_url=config.ws_url if config else None)
    step = min(timeout if timeout is not None else (config.connect_timeout if config else 10.0), 10.0)

    def skip(names: tuple[str, ...], why: str) -> DoctorReport:
        probes.extend(ProbeResult(n, SKIP, why) for n in names)
        return report

    endpoint = _endpoint(url) if url else None
    if endpoint is None or not endpoint[1]:
        return skip(PROBE_NAMES[2:], "skipped: no usable brain_url (see config)")
    if config is None:
        from .config import mask_url

        report.brain_url = mask_url(url)
    failed = _reach(endpoint, config, step, probes)
    if failed is not None:
        return skip(PROBE_NAMES[PROBE_NAMES.index(failed) + 1:], f"skipped: {failed} failed")
    if config is None:
        return skip(PROBE_NAMES[5:], "skipped: needs a valid configuration (see config)")
    if not websocket:
        return skip(PROBE_NAMES[5:], "skipped: --no-websocket")
    report.trace = _meet_the_brain(config, step, probes)
    return report


def _reach(endpoint: tuple[str, str, int], config: Config | None, step: float, probes: list[ProbeResult]) -> str | None:
    """The dns, tcp and tls stages; the name of the one that failed, or None."""
    scheme, host, port = endpoint
    dns, _ = _dns(host, port)
    probes.append(dns)
    if not dns.ok:
        return "dns"
    probes.append(_tcp(host, port, step))
    if not probes[-1].ok:
        return "tcp"
    if scheme not in ("https", "wss"):
        note = "plain ws:// to a loopback host: no TLS" if (config and config.is_loopback) else "plain ws://: no TLS"
        probes.append(ProbeResult("tls", SKIP, note))
    elif config is None:
        probes.append(ProbeResult("tls", SKIP, "skipped: needs a valid configuration (see config)"))
    else:
        probes.append(_tls(config, host, port, step))
        if not probes[-1].ok:
            return "tls"
    return None


def _meet_the_brain(config: Config, step: float, probes: list[ProbeResult]) -> list[dict[str, Any]]:
    """The stages that open sessions with the brain: websocket, hello, hmac, longpoll, skew, runtime.

    Returns the runtime's state trace.
    """
    ws_probes = _session(dataclasses.replace(config, handshake_timeout=min(config.handshake_timeout, step)), step)
    lp_probe = _longpoll(config, step)
    _weigh_transports(config.transport, ws_probes, lp_probe)
    probes.extend(ws_probes)
    probes.append(lp_probe)
    probes.append(_skew([*ws_probes, lp_probe]))
    # The runtime runs even after a failed session stage: its trace shows how the agent reacts.
    runtime_probe, trace = _runtime(config, wait=step + min(config.handshake_timeout, step) + 1.0)
    probes.append(runtime_probe)
    return trace


# ------------------------------------------------------------------------------------------ status


def buffer_status(home: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read-only view of every buffer under ``home`` (default Z4J_HOME or ~/.z4j) and of the
    $TMPDIR fallback the agent relocates to when ``home`` is unusable. Takes no lock and writes
    nothing, so it is safe next to a live agent and as another user."""
    from .storage.location import buffer_files_in
    from .storage.status import buffer_places, read_buffer

    root, places = buffer_places(home)
    buffers, problems = [], []
    for where, directory in places:
        try:
            names = buffer_files_in(directory)
        except OSError as exc:
            problems.append(f"cannot list {directory}: {exc.strerror or exc}")
            continue
        for path in names:
            try:
                info = read_buffer(path)
            except OSError as exc:
                info = {"path": str(path), "error": f"cannot read: {exc.strerror or exc}"}
            info["location"] = where
            if "error" in info:
                problems.append(f"{path}: {info['error']}")
            buffers.append(info)
    notes = [] if root.exists() else [f"{root} does not exist: no agent has run with this Z4J_HOME"]
    fallback = dict(places).get("fallback", root)
    return {"schema": "z4j-bare.status/1", "home": str(root), "fallback_dir": str(fallback),
            "buffers": buffers, "problems": problems, "notes": notes,
            "total_depth": sum(b.get("depth", 0) for b in buffers)}
