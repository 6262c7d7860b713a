"""The ``z4j-bare`` command line (also ``python -m z4j_bare``). docs/cli.md is the user guide.

Exit codes, the same for every subcommand:
    0  success (doctor: every stage passed or was skipped)
    1  the command ran and found a problem (a doctor stage failed, a buffer could not be read,
       the agent could not start)
    2  usage or configuration error (unknown flag, missing option, an app that cannot be imported)

Only this module configures logging (a library never does): human lines, or JSON lines with
``--json``, on stderr, so stdout carries nothing but the command's own output.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
LEVELS = ("debug", "info", "warning", "error")

_DESCRIPTION = """\
z4j-bare: the framework-free z4j agent for Celery and RQ workers.

Every connection option can also come from its Z4J_* environment variable (flags win). Prefer the
environment for Z4J_TOKEN and Z4J_HMAC_SECRET: a command line is visible to other users in `ps`.
"""

_EPILOG = """\
examples:
  z4j-bare doctor                            # check everything, values from Z4J_* env vars
  z4j-bare doctor --brain-url https://z4j.example.com --json
  z4j-bare run --rq-url redis://localhost:6379/0
  z4j-bare status                            # local buffers: depth, oldest event, losses
  z4j-bare demo                              # local brain + real worker, ends by itself
exit codes: 0 ok, 1 a check failed / the agent could not run, 2 usage or configuration error.
docs: docs/cli.md, docs/troubleshooting.md
"""


_DOCTOR_DESCRIPTION = """\
Probe, in order: config, buffer_dir, dns, tcp, tls, websocket, hello (the token), hmac (a signed
round trip proving the secret) and runtime (a real agent runtime; its state trace is printed).
On a terminal each stage is printed as soon as it finishes. Exit 0 when nothing failed, 1
otherwise. See docs/troubleshooting.md.

What the brain sees: config, buffer_dir, dns, tcp and tls send nothing to it. websocket, hello,
hmac and runtime open sessions with the brain as this agent: the brain marks the agent online
and shows the doctor's engine list ("doctor", no capabilities) until the real worker's next
hello, so run the full doctor before starting the worker (or restart the worker after it). The
hmac stage's signed batch is empty (nothing is stored); a command the brain has pending for the
agent is answered "failed" (not executed). --no-websocket stops after tls: nothing is sent.
"""


def _add_connection_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection (each falls back to its Z4J_* environment variable)")
    g.add_argument("--brain-url", metavar="URL", help="brain base URL, e.g. https://z4j.example.com (Z4J_BRAIN_URL)")
    g.add_argument("--token", metavar="TOKEN", help="agent token (Z4J_TOKEN; prefer the env var)")
    g.add_argument("--hmac-secret", metavar="SECRET", help="agent HMAC secret (Z4J_HMAC_SECRET; prefer the env var)")
    g.add_argument("--project-id", metavar="SLUG", help="project slug (Z4J_PROJECT_ID)")
    g.add_argument("--agent-name", metavar="NAME", help="display name of this agent (Z4J_AGENT_NAME)")
    g.add_argument("--home", metavar="DIR", help="agent state directory holding the buffer (Z4J_HOME; default ~/.z4j)")


def _as_flags(message: str) -> str:
    """A configuration error's "pass token=" reads "pass --token" for the options that have a flag."""
    flags = ("brain_url", "token", "hmac_secret", "project_id", "agent_name", "home")

    def flag(m: re.Match[str]) -> str:
        return m.group(0) if m.group(2) not in flags else f"{m.group(1)} --{m.group(2).replace('_', '-')}"

    message = re.sub(r"(pass) (\w+)=", flag, message)
    message = re.sub(r"(from) the (\w+)= argument", flag, message)
    return message.replace("pass the option as a keyword argument", "pass its flag (z4j-bare run --help)")


def _connection_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "brain_url": args.brain_url, "token": args.token, "hmac_secret": args.hmac_secret,
        "project_id": args.project_id, "agent_name": args.agent_name, "home": args.home,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="z4j-bare", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"z4j-bare {__version__}")
    parser.add_argument("--log-level", choices=LEVELS, default=None,
                        help="log level on stderr (default: info for run, warning otherwise)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("doctor", help="check config, buffer dir, DNS, TCP, TLS, WebSocket, token and HMAC secret",
                       description=_DOCTOR_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_connection_flags(p)
    p.add_argument("--no-websocket", action="store_true",
                   help="stop after DNS/TCP/TLS: no WebSocket, no hello, no signed frames, no runtime")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="bound for each network step (default: Z4J_CONNECT_TIMEOUT, at most 10 s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (schema z4j-bare.doctor/1)")

    p = sub.add_parser("run", help="run the agent for a Celery app or an RQ Redis URL until SIGTERM",
                       description="Start the agent in this process and keep it connected until SIGTERM or "
                       "Ctrl-C, then drain the buffer and exit 0. This standalone process serves operator "
                       "commands and reports queue health; task events are captured where tasks run, so "
                       "install the agent in your workers too (docs/quickstart.md).")
    _add_connection_flags(p)
    p.add_argument("--app", metavar="MODULE:ATTR", help="Celery application to attach, e.g. proj.celery:app")
    p.add_argument("--rq-url", metavar="URL", help="RQ Redis URL to attach, e.g. redis://localhost:6379/0 "
                   "(default Z4J_RQ_REDIS_URL when --engine rq)")
    p.add_argument("--rq-queue", action="append", metavar="NAME", help="RQ queue to report (repeatable; default all)")
    p.add_argument("--engine", choices=("celery", "rq"), action="append",
                   help="engine(s) to attach; inferred from --app / --rq-url")
    p.add_argument("--stop-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long to drain the buffer on SIGTERM (default 10)")
    p.add_argument("--json", action="store_true", help="JSON log lines on stderr")

    p = sub.add_parser("status", help="local buffers under Z4J_HOME: depth, oldest age, loss counters (read-only)",
                       description="Inspect the agent's buffer files read-only (no lock is taken, nothing is "
                       "written), including the $TMPDIR fallback used when Z4J_HOME is not writable. Exit 1 "
                       "when a buffer could not be read.")
    p.add_argument("--home", metavar="DIR", help="directory to inspect (default Z4J_HOME or ~/.z4j)")
    p.add_argument("--json", action="store_true", help="JSON output (schema z4j-bare.status/1)")

    p = sub.add_parser("statechart", help="print the runtime state machine as a mermaid diagram")
    p.add_argument("--markdown", action="store_true", help="the full statecharts/runtime.md page instead")

    p = sub.add_parser("brain", help="run the local reference brain (trials, tests); --help for its options",
                       add_help=False)
    p.add_argument("brain_args", nargs=argparse.REMAINDER)

    p = sub.add_parser("demo", help="end-to-end demo: local brain, real Celery (and RQ) worker, a retry round trip",
                       add_help=False)
    p.add_argument("demo_args", nargs=argparse.REMAINDER)

    p = sub.add_parser("version", help="print the agent, protocol and Python versions")
    p.add_argument("--json", action="store_true", help="JSON output")
    for command in sub.choices.values():  # a global flag is accepted after the command too
        command.add_argument("--log-level", choices=LEVELS, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def configure_logging(level: str, *, json_lines: bool = False) -> None:
    from .logs import log_to_stderr

    log_to_stderr(level, json_lines=json_lines)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------ commands


def cmd_doctor(args: argparse.Namespace) -> int:
    from .diagnostics import render_header, render_probe, run_doctor

    live = not args.json and sys.stdout.isatty()  # a person watching: each stage as it finishes

    def show(probe: Any) -> None:
        sys.stdout.write("\n".join(render_probe(probe)) + "\n")
        sys.stdout.flush()

    if live:
        sys.stdout.write(render_header() + "\n")
        sys.stdout.flush()
    report = run_doctor(_connection_options(args), websocket=not args.no_websocket, timeout=args.timeout,
                        kwarg_label="flag", on_probe=show if live else None)
    if args.json:
        sys.stdout.write(report.to_json() + "\n")
    elif live:
        sys.stdout.write(report.render_footer())
    else:
        sys.stdout.write(report.render_text())
    sys.stdout.flush()
    return EXIT_OK if report.ok else EXIT_PROBLEM


def cmd_version(args: argparse.Namespace) -> int:
    import platform

    from . import __version__
    from .protocol import PROTOCOL_VERSION_TEXT
    from .runtime import COMPAT_AGENT_VERSION

    data = {"z4j_bare": __version__, "protocol": PROTOCOL_VERSION_TEXT, "compat_agent_version": COMPAT_AGENT_VERSION,
            "python": platform.python_version()}
    if args.json:
        _print_json(data)
    else:
        print(f"z4j-bare {__version__}\nprotocol {PROTOCOL_VERSION_TEXT} (agent_version {COMPAT_AGENT_VERSION} "
              f"in hello)\npython {data['python']}")
    return EXIT_OK


def cmd_statechart(args: argparse.Namespace) -> int:
    from .statechart import render_markdown, render_mermaid

    sys.stdout.write(render_markdown() if args.markdown else render_mermaid())
    return EXIT_OK


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cmd_status(args: argparse.Namespace) -> int:
    from .diagnostics import buffer_status

    status = buffer_status(args.home)
    if args.json:
        _print_json(status)
    else:
        print(f"z4j home: {status['home']}")
        for note in status["notes"]:
            print(f"  note: {note}")
        if not status["buffers"]:
            print("  no buffer files")
        for b in status["buffers"]:
            where = " [fallback: Z4J_HOME was not writable]" if b.get("location") == "fallback" else ""
            print(f"  {b['path']}{where}")
            if "error" in b:
                print(f"    error: {b['error']}")
                continue
            owner = f"live agent pid {b['owner_pid']}" if b.get("owner_alive") else "no live owner (adopted by the next agent start)"
            loss = b.get("loss", {})
            lost = {k: v for k, v in loss.items() if k != "adapter_events" and v}
            print(f"    depth {b.get('depth', 0)} {b.get('by_kind') or ''}  oldest {_age(b.get('oldest_age_seconds'))}"
                  f"  size {b.get('size_bytes', 0) // 1024} KiB  owner: {owner}")
            print(f"    loss: {lost or 'none'}" + (f"  by engine {loss.get('adapter_events')}" if loss.get("adapter_events") else ""))
        for problem in status["problems"]:
            print(f"  problem: {problem}")
    return EXIT_PROBLEM if status["problems"] else EXIT_OK


def _load_app(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValueError(f"--app {spec!r}: use MODULE:ATTR, e.g. proj.celery:app")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `celery -A`: the app module is usually in the cwd
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--app {spec!r}: cannot import {module_name!r} ({exc}); run from the project "
                         "directory or set PYTHONPATH") from None
    target: Any = module
    for part in (attr or "app").split("."):
        if not hasattr(target, part):
            raise ValueError(f"--app {spec!r}: {module_name} has no attribute {part!r}")
        target = getattr(target, part)
    return target


def _wanted_engines(args: argparse.Namespace) -> set[str]:
    """The engines the flags ask for; ValueError when they do not add up (nothing is imported)."""
    wanted = set(args.engine or [])
    if args.app:
        wanted.add("celery")
    if args.rq_url or args.rq_queue:
        wanted.add("rq")
    if not wanted:
        raise ValueError("run needs an engine: --app MODULE:ATTR (Celery) and/or --rq-url redis://... (RQ)")
    if "celery" in wanted and not args.app:
        raise ValueError("--engine celery needs --app MODULE:ATTR (your Celery application)")
    if "rq" in wanted and not (args.rq_url or os.environ.get("Z4J_RQ_REDIS_URL", "").strip()):
        raise ValueError("--engine rq needs --rq-url redis://host:6379/0 (or Z4J_RQ_REDIS_URL)")
    return wanted


def _engines_for(args: argparse.Namespace) -> list[Any]:
    wanted = _wanted_engines(args)
    engines = []
    if "celery" in wanted:
        from .engines.celery import CeleryEngineAdapter

        # This process is no worker, and running an agent here is the point of `run`.
        engines.append(CeleryEngineAdapter(celery_app=_load_app(args.app), outside_worker=True))
    if "rq" in wanted:
        url = args.rq_url or os.environ.get("Z4J_RQ_REDIS_URL", "").strip()
        from .engines.rq import RqEngineAdapter

        engines.append(RqEngineAdapter(redis_url=url, queues=args.rq_queue or None))
    return engines


def _start_agent(args: argparse.Namespace) -> Any:
    """Disabled? Then the configuration and the engine flags, both reported when both are wrong,
    before any engine is built (an app import error must not hide a configuration error); then
    the agent. None when Z4J_DISABLED is set."""
    from .agent import _disabled, install_agent
    from .config import Config, ConfigError

    if _disabled(None):
        return None
    options = {k: v for k, v in _connection_options(args).items() if v is not None}
    options["stop_timeout"] = args.stop_timeout
    problems = []
    for check in (lambda: Config.resolve(**options), lambda: _wanted_engines(args)):
        try:
            check()
        except (ConfigError, ValueError) as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("\nz4j-bare run: ".join(problems))
    return install_agent(engines=_engines_for(args), **options)


def cmd_run(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .engines.extras import MissingExtra
    from .logs import get_logger

    log = get_logger("z4j_bare.cli")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    # Installed before anything slow so a SIGTERM during start-up still ends in a clean stop.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            runtime = _start_agent(args)
        except (ConfigError, ValueError, TypeError, MissingExtra) as exc:
            print(f"z4j-bare run: {_as_flags(str(exc))}", file=sys.stderr)
            return EXIT_USAGE
        except Exception as exc:  # noqa: BLE001 - report, with the type, and exit non-zero
            print(f"z4j-bare run: the agent could not start: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_PROBLEM
        if runtime is None:
            print("z4j-bare run: Z4J_DISABLED is set; nothing to run", file=sys.stderr)
            return EXIT_OK
        log.info("cli.run_started", engines=sorted(runtime.engines), brain=runtime.config.ws_url, pid=os.getpid())
        while not stop.wait(1.0):
            pass
        log.info("cli.run_stopping", signal=signal.Signals(received[0]).name if received else None)
        drained = runtime.stop(args.stop_timeout)
        health = runtime.health()
        log.info("cli.run_stopped", drained=drained, buffered=health["buffer_depth"], events_acked=health["events_acked"])
        return EXIT_OK
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def cmd_brain(args: argparse.Namespace) -> int:
    from .engines.extras import missing_modules

    if missing_modules("websockets"):
        print("z4j-bare brain: the local brain needs websockets, which is not installed: "
              "pip install 'z4j-bare[brain]'", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module("z4j_bare.testing.cli")
    return _call(module.main, list(args.brain_args))


def _call(entry: Any, argv: list[str]) -> int:
    try:
        return int(entry(argv) or 0)
    except SystemExit as exc:  # an argparse --help or usage error inside the sub-command
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)


def cmd_demo(args: argparse.Namespace) -> int:
    from .engines.extras import missing_modules

    missing = missing_modules("celery", "websockets", "redis", "rq")
    if missing:
        print(f"z4j-bare demo: the demo needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
              "not installed: pip install 'z4j-bare[demo]'", file=sys.stderr)
        return EXIT_USAGE
    from . import demo

    return _call(demo.main, list(args.demo_args))


COMMANDS = {"doctor": cmd_doctor, "run": cmd_run, "status": cmd_status, "statechart": cmd_statechart,
            "brain": cmd_brain, "demo": cmd_demo, "version": cmd_version}


def _passthrough_index(argv: list[str]) -> int | None:
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--log-level" else 1
    return i if i < len(argv) and argv[i] in ("brain", "demo") else None


def _global_flags(tail: list[str]) -> tuple[list[str], list[str]]:
    """Split ``--log-level X`` / ``--log-level=X`` out of what follows ``brain`` or ``demo``."""
    flags: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(tail):
        if tail[i] == "--log-level" and i + 1 < len(tail):
            flags += tail[i:i + 2]
            i += 2
            continue
        (flags if tail[i].startswith("--log-level=") else rest).append(tail[i])
        i += 1
    return flags, rest


# Random credentials are URL-safe base64, so one in 32 begins with "-" and argparse would read it
# as the next flag ("--hmac-secret: expected one argument").
_OPAQUE_VALUE_FLAGS = ("--token", "--hmac-secret")
_LONG_FLAG = re.compile(r"--[a-z][a-z-]*(=|$)")


def _glue_opaque_values(argv: list[str]) -> list[str]:
    """``--token -abc`` becomes ``--token=-abc`` unless what follows is itself a long flag."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _OPAQUE_VALUE_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and not _LONG_FLAG.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `brain` and `demo` own everything after their name (argparse's REMAINDER would refuse a
    # leading option such as `demo --no-redis`).
    split = _passthrough_index(argv)
    head, tail = (argv[: split + 1], argv[split + 1:]) if split is not None else (argv, [])
    flags, tail = _global_flags(tail)
    head = _glue_opaque_values(flags + head)
    try:
        args = parser.parse_args(head)
    except SystemExit as exc:  # argparse: --help exits 0, a usage error 2
        return int(exc.code or 0)
    if split is not None:
        setattr(args, f"{args.command}_args", tail)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    default_level = "info" if args.command == "run" else "warning"
    configure_logging(args.log_level or default_level, json_lines=bool(getattr(args, "json", False)))
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `z4j-bare status | head`
        return EXIT_OK
