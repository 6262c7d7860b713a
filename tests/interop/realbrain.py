"""Run the published z4j brain (``z4j==1.13.0``) as a subprocess and talk to its HTTP API.

Standard library only, so it works from any interpreter (the project venv, the benchmark venv,
a bare ``python3``). The brain is AGPL: it is installed into its own virtualenv cached outside
the checkout and is only ever run as a separate process; nothing here imports it.

    with RealBrain(home=tmp_dir) as brain:
        creds = brain.mint_agent(project="interop", name="agent-1")
        ...
        brain.wait_for_tasks("interop", 3)

CLI (also reachable through ``scripts/realbrain.py``)::

    python tests/interop/realbrain.py install          # ensure the cached brain venv, print it
    python tests/interop/realbrain.py serve --port 7700 --home /tmp/brain-home
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

BRAIN_REQUIREMENT = "z4j==1.13.0"
BRAIN_VERSION = "1.13.0"
ADMIN_EMAIL = "admin@example.com"
# Long enough for the brain's password policy; this brain only ever listens on loopback.
ADMIN_PASSWORD = "Interop-Only-Passw0rd!"
_MARKER = ".z4j-interop-ok"
_TERMINAL_COMMAND_STATES = frozenset({"completed", "failed", "timeout", "cancelled"})
_DEFAULT_DONE_STATES = ("success", "failure", "revoked", "rejected")


class BrainError(RuntimeError):
    """The brain could not be installed or started, or answered unexpectedly."""


class BrainHTTPError(BrainError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:300]}")


@dataclass(frozen=True)
class BrainCredentials:
    """Same fields as the local test brain's ``AgentCredentials``; secrets stay out of repr."""

    brain_url: str
    token: str = field(repr=False)
    hmac_secret: str = field(repr=False)
    project_id: str  # the project slug (what Z4J_PROJECT_ID holds)
    agent_id: str
    project_uuid: str = ""

    def as_env(self) -> dict[str, str]:
        """The environment a z4j agent reads (Z4J_BRAIN_URL, Z4J_TOKEN, ...)."""
        return {
            "Z4J_BRAIN_URL": self.brain_url,
            "Z4J_TOKEN": self.token,
            "Z4J_HMAC_SECRET": self.hmac_secret,
            "Z4J_PROJECT_ID": self.project_id,
            "Z4J_AGENT_ID": self.agent_id,
        }


AgentCredentials = BrainCredentials


# ---------------------------------------------------------------------------------------------
# the cached brain virtualenv


def cache_root() -> Path:
    explicit = os.environ.get("Z4J_INTEROP_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "z4j-bare-interop"


def brain_venv_dir() -> Path:
    return cache_root() / "brain-venv"


def _venv_bin(venv: Path, name: str) -> Path:
    return venv / "bin" / name


def _venv_works(venv: Path) -> bool:
    exe = _venv_bin(venv, "z4j")
    if not (venv / _MARKER).is_file() or not exe.is_file():
        return False
    try:
        out = subprocess.run(
            [str(exe), "--version"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and BRAIN_VERSION in (out.stdout + out.stderr)


def ensure_brain_venv(venv: Path | None = None, *, log=print) -> Path:
    """Install ``z4j==1.13.0`` into ``venv`` unless a working install is already there.

    A file lock serialises concurrent callers (two pytest sessions, two clones). A marker file
    written only after ``z4j --version`` succeeds tells a complete install from an interrupted
    one; an interrupted or broken venv is wiped and rebuilt.
    """
    venv = Path(venv) if venv else brain_venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / (venv.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _venv_works(venv):
            return venv
        log(f"realbrain: installing {BRAIN_REQUIREMENT} into {venv} (one-time, cached)")
        shutil.rmtree(venv, ignore_errors=True)
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        _run([base_python, "-m", "venv", str(venv)], "create the brain virtualenv")
        _run(
            [
                str(_venv_bin(venv, "python")),
                "-m",
                "pip",
                "install",
                "--quiet",
                BRAIN_REQUIREMENT,
            ],
            f"pip install {BRAIN_REQUIREMENT} (needs the package index; set PIP_INDEX_URL if offline)",
            timeout=900,
        )
        (venv / _MARKER).write_text(BRAIN_REQUIREMENT + "\n")
        if not _venv_works(venv):
            (venv / _MARKER).unlink(missing_ok=True)
            raise BrainError(
                f"{venv}: `z4j --version` does not report {BRAIN_VERSION} after install"
            )
        return venv


def _run(cmd: list[str], what: str, timeout: float = 300) -> None:
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrainError(f"could not {what}: {exc}") from None
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
        raise BrainError(f"could not {what} (exit {out.returncode}):\n{tail}")


def _die_with_parent() -> None:
    """Linux: SIGTERM the brain if the process (thread) that started it dies, even by SIGKILL,
    so a killed pytest never leaves a brain behind. Best effort elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(
            1, signal.SIGTERM
        )  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _faketime() -> str:
    exe = shutil.which("faketime")
    if exe is None:
        raise BrainError("a brain with a clock offset runs under libfaketime: install the Debian package "
                         "`faketime` (scripts/ensure_services.sh does)")
    return exe


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# the brain process + HTTP client


class RealBrain:
    """One ``z4j serve`` subprocess with its own fresh ``Z4J_HOME`` (SQLite inside it)."""

    def __init__(
        self,
        home: str | os.PathLike[str],
        port: int | None = None,
        *,
        venv: Path | None = None,
        admin_email: str = ADMIN_EMAIL,
        admin_password: str = ADMIN_PASSWORD,
        env: dict[str, str] | None = None,
        clock_offset: float = 0.0,
    ) -> None:
        self.home = Path(home)
        #: Extra brain settings (e.g. ``{"Z4J_MAX_PAYLOAD_SIZE_BYTES": "1048576"}``).
        self.extra_env = dict(env or {})
        # Seconds the brain's clock runs ahead of the host's (negative: behind), through libfaketime
        # (Debian package ``faketime``); the brain alone runs under it, never an agent.
        self.clock_offset = clock_offset
        self.port = port
        self.venv = Path(venv) if venv else brain_venv_dir()
        self.admin_email = admin_email
        self._admin_password = admin_password
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._jar = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self._jar)
        )
        self._logged_in = False
        self._project_uuids: dict[str, str] = {}

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RealBrain(url={self.url!r}, home={str(self.home)!r}, {state})"

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}" if self.port else ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.home / "brain.log"

    def start(self, timeout: float = 90) -> Self:
        if self.running:
            return self
        ensure_brain_venv(self.venv)
        self.home.mkdir(parents=True, exist_ok=True)
        explicit = self.port is not None
        attempts = (
            1 if explicit else 3
        )  # a probed free port can be taken before the brain binds it
        for attempt in range(attempts):
            try:
                self._spawn(self.port if explicit else free_port(), timeout)
                return self
            except BaseException as exc:
                if not isinstance(exc, BrainError):  # Ctrl-C / SIGTERM while booting
                    self.stop()
                    raise
                clash = "address already in use" in self.log_tail(8).lower()
                self.stop()
                if not explicit:
                    self.port = None
                if not clash or attempt + 1 == attempts:
                    raise
        return self

    def _spawn(self, port: int, timeout: float) -> None:
        self.port = port
        env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_")}
        env.update(
            Z4J_HOME=str(self.home),
            Z4J_ENVIRONMENT="dev",
            Z4J_ALLOWED_HOSTS='["127.0.0.1","localhost"]',
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        cmd = [
            str(_venv_bin(self.venv, "z4j")), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--admin-email", self.admin_email, "--admin-password", self._admin_password,
        ]  # fmt: skip
        if self.clock_offset:
            cmd = [_faketime(), "-f", f"{self.clock_offset:+g}s", *cmd]
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"  # timers and timeouts keep real time
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the brain; closed in stop()
        # own session = own process group, so stop() can kill uvicorn and anything it forked
        self._proc = subprocess.Popen(
            cmd, cwd=self.home, env=env, stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl, async-signal-safe
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrainError(
                    f"z4j serve exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            if self._health_ok():
                return
            time.sleep(0.25)
        raise BrainError(
            f"z4j serve not healthy after {timeout:.0f} s:\n{self.log_tail()}"
        )

    def _health_ok(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/api/v1/health", timeout=2) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, grace: float = 10) -> None:
        """Terminate the brain's whole process group; escalate to SIGKILL after ``grace``."""
        proc, self._proc = self._proc, None
        self._logged_in = False
        self._jar.clear()
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGCONT)  # a frozen brain (freeze()) cannot act on SIGTERM
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # leftovers in the group, if any
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def freeze(self) -> None:
        """SIGSTOP the brain's process group: its sockets stay open and silent (a frozen host)."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGCONT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- HTTP -----------------------------------------------------------------------------

    def _csrf(self) -> str | None:
        for cookie in self._jar:
            if cookie.name.endswith("z4j_csrf"):
                return cookie.value
        return None

    def request(
        self, method: str, path: str, body: Any = None, *, _retry: bool = True
    ) -> Any:
        """JSON request against ``/api/v1``; logs in first; raises BrainHTTPError on >= 400."""
        if not self._logged_in and path != "/auth/login":
            self.login()
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if method != "GET" and (csrf := self._csrf()):
            headers["X-CSRF-Token"] = csrf
        req = urllib.request.Request(
            self.url + "/api/v1" + path, data=data, method=method, headers=headers
        )
        try:
            with self._opener.open(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            if exc.code == 401 and _retry and path != "/auth/login":
                self._logged_in = False
                return self.request(method, path, body, _retry=False)
            raise BrainHTTPError(method, path, exc.code, text) from None
        return json.loads(raw) if raw else None

    def login(self) -> None:
        self.request(
            "POST",
            "/auth/login",
            {"email": self.admin_email, "password": self._admin_password},
        )
        self._logged_in = True

    def ensure_project(self, slug: str, name: str | None = None) -> str:
        """Create the project (409 = already there); returns its UUID."""
        if slug in self._project_uuids:
            return self._project_uuids[slug]
        try:
            project = self.request(
                "POST", "/projects", {"slug": slug, "name": name or slug}
            )
        except BrainHTTPError as exc:
            # 409 means "exists" but also "slug must match ^[a-z0-9][a-z0-9-]{1,48}[a-z0-9]$"
            if exc.status != 409:
                raise
            try:
                project = self.request("GET", f"/projects/{_q(slug)}")
            except BrainHTTPError as missing:
                if missing.status == 404:
                    raise exc from None
                raise
        self._project_uuids[slug] = project["id"]
        return project["id"]

    def mint_agent(
        self, project: str = "interop", name: str = "agent-1"
    ) -> BrainCredentials:
        project_uuid = self.ensure_project(project)
        minted = self.request("POST", f"/projects/{_q(project)}/agents", {"name": name})
        return BrainCredentials(
            brain_url=self.url,
            token=minted["token"],
            hmac_secret=minted["hmac_secret"],
            project_id=project,
            agent_id=minted["agent"]["id"],
            project_uuid=project_uuid,
        )

    # -- reads ----------------------------------------------------------------------------

    def tasks(
        self, project: str, state: str | None = None, *, limit: int = 500
    ) -> list[dict[str, Any]]:
        """Every task row of the project (all pages). ``state`` is lower-case on this brain."""
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state.lower()
        rows: list[dict[str, Any]] = []
        while True:
            page = self.request(
                "GET",
                f"/projects/{_q(project)}/tasks?" + urllib.parse.urlencode(params),
            )
            rows.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return rows
            params["cursor"] = cursor

    def task_count(self, project: str, state: str | None = None) -> int:
        params: dict[str, Any] = {"limit": 1, "include_total": "true"}
        if state:
            params["state"] = state.lower()
        page = self.request(
            "GET", f"/projects/{_q(project)}/tasks?" + urllib.parse.urlencode(params)
        )
        return int(page.get("total_count") or 0)

    def task(self, project: str, engine: str, task_id: str) -> dict[str, Any] | None:
        try:
            return self.request(
                "GET", f"/projects/{_q(project)}/tasks/{_q(engine)}/{_q(task_id)}"
            )
        except BrainHTTPError as exc:
            if exc.status == 404:
                return None
            raise

    def wait_for_tasks(
        self,
        project: str,
        n: int,
        states: Iterable[str] = _DEFAULT_DONE_STATES,
        timeout: float = 30,
        poll: float = 0.25,
    ) -> list[dict[str, Any]]:
        """Poll until at least ``n`` tasks are in one of ``states``; returns those rows."""
        wanted = {s.lower() for s in states}
        deadline = time.monotonic() + timeout
        while True:
            rows = [
                t
                for t in self.tasks(project)
                if str(t.get("state", "")).lower() in wanted
            ]
            if len(rows) >= n:
                return rows
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(rows)} of {n} tasks reached {sorted(wanted)} within {timeout:.0f} s"
                )
            time.sleep(poll)

    def agents(self, project: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/projects/{_q(project)}/agents")

    def agent(self, project: str, agent_id: str) -> dict[str, Any] | None:
        return next((a for a in self.agents(project) if a["id"] == agent_id), None)

    def workers(self, project: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/projects/{_q(project)}/workers")

    def queues(self, project: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/projects/{_q(project)}/queues")

    # -- commands -------------------------------------------------------------------------

    def command(self, project: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Issue an operator command (``kind`` is the route, e.g. ``retry-task``); 202 record."""
        return self.request(
            "POST", f"/projects/{_q(project)}/commands/{_q(kind)}", body
        )

    def get_command(self, project: str, command_id: str) -> dict[str, Any]:
        return self.request("GET", f"/projects/{_q(project)}/commands/{_q(command_id)}")

    def wait_command(
        self, project: str, command_id: str, timeout: float = 30, poll: float = 0.1
    ) -> dict[str, Any]:
        """Poll until the command leaves pending/dispatched; returns the final record."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.get_command(project, command_id)
            if record["status"] in _TERMINAL_COMMAND_STATES:
                return record
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"command {command_id} still {record['status']} after {timeout:.0f} s"
                )
            time.sleep(poll)


def _q(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="realbrain", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser(
        "install", help="ensure the cached brain virtualenv and print its path"
    )
    serve = sub.add_parser(
        "serve", help="run a fresh brain in the foreground until Ctrl-C"
    )
    serve.add_argument(
        "--home", required=True, help="Z4J_HOME for this brain (created if missing)"
    )
    serve.add_argument("--port", type=int, default=7700)
    serve.add_argument(
        "--project", default="default", help="project slug to mint an agent in"
    )
    serve.add_argument(
        "--mint", metavar="NAME", help="mint an agent and print its Z4J_* environment"
    )
    args = parser.parse_args(argv)

    if args.cmd == "install":
        print(ensure_brain_venv())
        return 0

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM must still run the cleanup below, not orphan the brain

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    with RealBrain(home=args.home, port=args.port) as brain:
        print(
            f"brain ready at {brain.url} (admin {brain.admin_email} / {ADMIN_PASSWORD}); log {brain.log_path}"
        )
        if args.mint:
            for key, value in (
                brain.mint_agent(args.project, args.mint).as_env().items()
            ):
                print(f"export {key}={value}")
        try:
            while brain.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        if not brain.running:
            print(brain.log_tail(), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
